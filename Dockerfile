# fastproxy container image: build the wheel (Cython core compiled; its TLS links the
# image's libssl, the one Python's ssl uses) in one stage, run it from a slim image as a
# non-root user in the other.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY fastproxy ./fastproxy
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /wheels

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin fastproxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/fastproxy.toml /etc/fastproxy/fastproxy.toml
ENV FASTPROXY_CONFIG=/etc/fastproxy/fastproxy.toml
USER 10001
EXPOSE 15001 15006 9901
ENTRYPOINT ["fastproxy"]
CMD ["run"]
