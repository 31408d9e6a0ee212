-- The change feed: one row per customer per consumer batch that changed it,
-- written in the batch's own transaction (so a change is in the feed exactly
-- when it is visible in reads), under a lock held to commit so cursors
-- commit in order and a reader that stores its cursor never misses one.
-- `kind` is `customer`, or `resync` when many customers may have changed at
-- once without rows of their own (a generation switch, a backfill from the
-- log): readers then re-read the state they care about.
create table projection_changes (
    cursor               bigint generated always as identity primary key,
    kind                 text        not null,
    customer_id          text,
    external_id          text,
    member_ids           text[]      not null default '{}',
    changed_at           timestamptz not null default clock_timestamp(),
    changed              text[]      not null default '{}',
    granted_benefit_ids  text[]      not null default '{}',
    active_subscriptions jsonb       not null default '[]'
);
create index on projection_changes (changed_at);

-- The highest cursor retention has deleted: an older cursor gets a 410.
create table projection_changes_pruned (
    singleton boolean primary key default true check (singleton),
    through   bigint  not null
);
