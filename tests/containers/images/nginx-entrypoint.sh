#!/bin/sh
# What the official image's /docker-entrypoint.d/20-envsubst-on-templates.sh does: render every
# /etc/nginx/templates/*.template into /etc/nginx/conf.d/, substituting only the environment variables
# whose names match NGINX_ENVSUBST_FILTER (so nginx's own $variables survive), then run the command.
set -eu
filter="${NGINX_ENVSUBST_FILTER:-}"
names=$(awk -v filter="$filter" 'END { for (name in ENVIRON) if (name ~ filter) print name }' </dev/null)
shell_format=""
for name in $names; do shell_format="$shell_format \${$name}"; done
for template in /etc/nginx/templates/*.template; do
  [ -f "$template" ] || continue
  out="/etc/nginx/conf.d/$(basename "$template" .template)"
  envsubst "$shell_format" < "$template" > "$out"
  echo "nginx-entrypoint: rendered $template to $out" >&2
done
exec "$@"
