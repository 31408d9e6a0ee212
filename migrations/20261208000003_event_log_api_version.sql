-- The API version each event's payload is written in: the webhook's
-- `webhook-api-version` header (else the body's `api_version`), or the
-- version reconcile read Polar's API in. NULL for events logged before it
-- was kept. A nullable column without a default is added without
-- rewriting the log.
alter table event_log add column api_version text;
