-- How far the push to the app (PROJECTOR_NOTIFY_URL) has got in the change
-- feed: the cursor of the last change the app answered 2xx for.
create table projection_push_position (
    singleton  boolean     primary key default true check (singleton),
    cursor     bigint      not null,
    updated_at timestamptz not null default now()
);
