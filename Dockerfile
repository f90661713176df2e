FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY worker ./worker
COPY tasks ./tasks
COPY sandbox ./sandbox
COPY cli ./cli
COPY api ./api
RUN pip install --no-cache-dir .
RUN mkdir -p /data && chown nobody /data
USER nobody
