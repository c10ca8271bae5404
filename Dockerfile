# pg-rekey daemon image. Build: docker build -t pg-rekey .
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
ENTRYPOINT ["node", "/app/bin/pg-rekey.js"]
CMD ["run", "-c", "/config/pg-rekey.yaml", "--env-file", "/run/secrets/pg-rekey.env"]
