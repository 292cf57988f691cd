# The memstage image the Helm chart runs: `memstage manager` / `memstage benefactor`.
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY memstage memstage
RUN pip install --no-cache-dir . && rm -rf /src

# Manager and benefactors need no privileges; the state and PFS volumes are writable by this uid
# (the chart sets fsGroup 10001).
RUN useradd --uid 10001 --create-home memstage
USER 10001
WORKDIR /home/memstage
ENTRYPOINT ["memstage"]
CMD ["--help"]
