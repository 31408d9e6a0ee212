-- Every reconcile run, from `ingest reconcile` or the periodic mode: when it
-- ran, how it ended and what it found. The periodic mode schedules the next
-- run from the last one that succeeded, so restarts do not rescan Polar.
create table reconcile_runs (
    id          bigint generated always as identity primary key,
    started_at  timestamptz not null default now(),
    finished_at timestamptz,
    -- null while running (or when the process died mid-run)
    outcome     text check (outcome in ('ok', 'failed')),
    -- counts of the summary: objects seen, appended, unchanged, removed, ...
    summary     jsonb,
    error       text
);
create index reconcile_runs_succeeded on reconcile_runs (finished_at) where outcome = 'ok';
