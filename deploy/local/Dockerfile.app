# App image for machines without a registry, built by scripts/build-app-image.sh from a staged
# context (package.json, production node_modules, compiled dist, demo model). One image serves all four
# services; the command picks one, e.g. `dist/services/aggregator/main.js`.
# Users with a registry build deploy/Dockerfile instead.
ARG BASE=local/node:20
FROM ${BASE}
WORKDIR /app
# package.json carries "type":"module", which the compiled ESM needs at run time.
COPY package.json ./
COPY node_modules ./node_modules
COPY dist ./dist
# Demo checkpoint(s) (scripts/build-app-image.sh MODELS=...), read-only at /app/models/<name>.
COPY models ./models
ENV NODE_ENV=production
USER 1000:1000
CMD ["dist/services/server-alignment/main.js"]
