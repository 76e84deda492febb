"""Answers: the question catalogue (reports and search) and how a terminal shows them."""
