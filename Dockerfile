# holysheep-ingest receiver.
#   docker build -t holysheep-ingest .
#   docker run -e INGEST_WEBHOOK_SECRET=... -p 8080:8080 -v ingest-data:/data holysheep-ingest
# With INGEST_ELASTICSEARCH_URL set, the container first runs `holysheep-ingest setup` (ILM policy,
# templates, data stream; waits up to 120 s for the cluster) and only then serves; without it the
# receiver runs on its embedded store alone.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ingest ./ingest
COPY elasticsearch ./elasticsearch
COPY kibana ./kibana
# The assets are installed as data files under <venv>/share/holysheep-ingest/ (elasticsearch/,
# elasticsearch/queries/, kibana/); fail the build here rather than at `setup` time if any of
# them (or a dependency) went missing. Checked from / with -P (no current directory on
# sys.path): from /src the source tree would be found instead of the installed copy.
RUN /opt/venv/bin/pip install . \
 && cd / \
 && /opt/venv/bin/python -P -c "import sys; from pathlib import Path; import ingest; from ingest.admin.kibana import saved_objects_path; from ingest.answers.reports import DEFAULT_SINCE; from ingest.admin.elasticsearch import asset_dir; es = asset_dir(); found = [Path(ingest.__file__), es / 'ilm-policy.json', *(es / 'queries' / f'{q}.json' for q in DEFAULT_SINCE), saved_objects_path()]; wrong = [str(p) for p in found if not (p.is_file() and p.resolve().is_relative_to(Path(sys.prefix).resolve()))]; sys.exit('not in the installed copy: ' + ', '.join(wrong)) if wrong else print('installed:', *found)"

FROM python:3.11-slim
# Listening on every interface, the dashboard would need INGEST_UI_TOKEN to start: it is off
# unless the container is given INGEST_UI=on and a token.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INGEST_HOST=0.0.0.0 \
    INGEST_DATA_DIR=/data \
    INGEST_UI=off
RUN groupadd --system --gid 10001 ingest \
 && useradd --system --uid 10001 --gid ingest --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin ingest \
 && install -d -o ingest -g ingest -m 0750 /data
COPY --from=build /opt/venv /opt/venv
USER ingest
WORKDIR /data
# A new named volume takes this directory's owner (ingest) on first mount.
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('INGEST_PORT', '8080'), timeout=4)"]
CMD ["sh", "-c", "if [ -n \"${INGEST_ELASTICSEARCH_URL:-}\" ]; then holysheep-ingest setup --wait 120 || exit 1; fi; exec holysheep-ingest serve"]
