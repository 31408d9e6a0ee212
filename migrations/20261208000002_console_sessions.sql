-- Console sessions ended by a logout before their expiry. A session is a
-- signed cookie (no row while it lives); its random nonce lands here when
-- the operator logs out, so a copy of the cookie stops working at once on
-- every replica. Rows go once the session would have expired anyway.
create table console_ended_sessions (
    nonce      text        primary key,
    expires_at timestamptz not null
);
