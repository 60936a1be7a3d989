# One image for the API, the model service and every worker. CUDA comes from the torch wheels.
# It installs the package as `make run` does (without the dev extras): every package that
# pyproject.toml lists, with the web UI's files as package data. tests/test_compose.py builds
# this context's COPY lines with pip and runs the compose services from the result.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DIGITS_DATA_DIR=/data DIGITS_HOST=0.0.0.0 DIGITS_PORT=8000

RUN groupadd --system --gid 1000 digits \
 && useradd --system --uid 1000 --gid digits --home-dir /app --shell /usr/sbin/nologin digits \
 && mkdir -p /app /data && chown digits:digits /data

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY shared ./shared
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
RUN pip install .

USER digits
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4)" || exit 1
CMD ["digits", "api"]
