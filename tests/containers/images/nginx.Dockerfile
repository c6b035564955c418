# Debian's nginx, started the way the official nginx image starts (the compose `lb` service): the
# templates in /etc/nginx/templates/ are rendered with envsubst into conf.d/ first, then nginx runs in
# the foreground. The configuration is the repository's deploy/nginx/templates/, mounted at run time.
ARG BASE_IMAGE
# hadolint ignore=DL3006
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx gettext-base \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
COPY --chmod=755 nginx-entrypoint.sh /usr/local/bin/nginx-entrypoint
ENTRYPOINT ["nginx-entrypoint"]
CMD ["nginx", "-g", "daemon off;"]
STOPSIGNAL SIGQUIT
