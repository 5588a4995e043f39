-- Run once by the Postgres image on an empty data directory (/docker-entrypoint-initdb.d), as the
-- POSTGRES_USER of .env: one database per Ory service, migrated by the stack's one-shot
-- hydra-migrate and kratos-migrate services.
CREATE DATABASE hydra;
CREATE DATABASE kratos;
