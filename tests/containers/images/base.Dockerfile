# The test's stand-in for python:3.11-slim-bookworm, which no registry can give this machine. Its parent is
# Debian bookworm built by mmdebstrap and `docker import`ed (tests/containers/engine.py); this adds what the
# project's Dockerfile expects of its PYTHON_IMAGE, and this machine's CA bundle for the package registries
# (only here: the project's images never carry it).
ARG DEBIAN_IMAGE
# hadolint ignore=DL3006
FROM ${DEBIAN_IMAGE}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# pip in a venv ships its own certificates; point it (and anything using requests or OpenSSL) at this bundle.
ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# No service starts while a package installs (builds share the host's network: nginx would take port 80).
RUN ln -s /usr/bin/python3 /usr/local/bin/python \
 && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
CMD ["python"]
