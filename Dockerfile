# pg-rekey daemon image. Build: docker build -t pg-rekey .
# (Not built in CI: the machines running the tests have no Docker engine.)
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
RUN npm ci --ignore-scripts && npx tsc -p tsconfig.json

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY bin ./bin
COPY sql ./sql
USER node
EXPOSE 9187
# `--` ends node's own options: Node 20 would otherwise take pg-rekey's --env-file for its own
# (and exit 9 on a path it cannot read).
ENTRYPOINT ["node", "--", "/app/bin/pg-rekey.js"]
CMD ["run", "-c", "/config/pg-rekey.yaml", "--env-file", "/run/secrets/pg-rekey.env"]
