# fastproxy's container image. Two stages: the build one compiles the Cython core (its TLS
# links the base's libssl, the one Python's ssl uses) into a virtual environment; the
# runtime one is the base plus that environment, run as uid 1337 (the sidecar's uid,
# which `fastproxy iptables` leaves uncaptured) and fine with a read-only root filesystem.
#
#   docker build .                       # on python:3.11-slim-bookworm
#   make image                           # here: buildah on bases made from Debian packages
#
# Both stages must put python3 at the same path (the environment links to it).
ARG BASE=python:3.11-slim-bookworm
ARG BUILD_BASE=${BASE}

FROM ${BUILD_BASE} AS build
RUN command -v gcc >/dev/null || { apt-get update && apt-get install -y --no-install-recommends \
      gcc libc6-dev libssl-dev && rm -rf /var/lib/apt/lists/*; }
WORKDIR /src
# pip behind an intercepting proxy: the CA bundle's path (make image mounts the host's)
ARG PIP_CERT
COPY pyproject.toml setup.py README.md ./
COPY fastproxy ./fastproxy
# pip, setuptools and debug symbols are not needed at run time; bytecode is compiled now,
# since the root filesystem may be read-only and the sidecar should start fast
RUN python3 -m venv /opt/fastproxy \
    && /opt/fastproxy/bin/pip install --no-cache-dir --quiet . \
    && /opt/fastproxy/bin/pip uninstall --yes --quiet pip setuptools \
    && find /opt/fastproxy -name '*.so' -exec strip --strip-unneeded {} + \
    && /opt/fastproxy/bin/python -m compileall -q -j 0 /opt/fastproxy/lib

FROM ${BASE}
# the pod's init step runs `fastproxy iptables` from this image: iptables-restore is needed
RUN command -v iptables-restore >/dev/null || { apt-get update && apt-get install -y --no-install-recommends \
      iptables && rm -rf /var/lib/apt/lists/*; }
COPY --from=build /opt/fastproxy /opt/fastproxy
COPY config/fastproxy.toml /etc/fastproxy/fastproxy.toml
ENV PATH=/opt/fastproxy/bin:$PATH \
    FASTPROXY_CONFIG=/etc/fastproxy/fastproxy.toml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 1337:1337
EXPOSE 15001 15006 15000
ENTRYPOINT ["fastproxy"]
CMD ["run"]
