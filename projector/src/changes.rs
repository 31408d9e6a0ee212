//! Change notifications: after a consumer batch commits, Postgres tells every
//! projector replica which customers it changed, so read caches can forget
//! them. NOTIFY is transactional (delivered only if the batch commits) and
//! reaches every listening replica, whichever one's consumer made the change.

use sqlx::PgConnection;

use crate::feed;
use crate::projection::{BatchOutcome, Generation};

/// The channel consumer batches notify with the customers they changed.
pub const CHANGES_CHANNEL: &str = "hookstream_projection_changed";
/// A payload meaning "forget everything" (a generation switch, an id that
/// cannot be named in a payload).
pub const CLEAR_ALL: &str = "*";
/// NOTIFY payloads must stay under 8000 bytes.
const MAX_PAYLOAD: usize = 7900;

/// The token naming a customer in a payload.
pub fn customer_key(id: &str) -> String {
    format!("c:{id}")
}

/// The token naming an external id (of customers or members) in a payload.
pub fn external_key(external_id: &str) -> String {
    format!("x:{external_id}")
}

/// Payloads naming customers (`c:<id>`) and external ids (`x:<external id>`),
/// comma-separated, each under Postgres's size limit.
pub fn payloads<'a>(
    customer_ids: impl IntoIterator<Item = &'a str>,
    external_ids: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let tokens = customer_ids
        .into_iter()
        .map(customer_key)
        .chain(external_ids.into_iter().map(external_key));
    let mut payloads: Vec<String> = Vec::new();
    for token in tokens {
        // A token with a comma could not be split back out.
        if token.contains(',') || token.len() > MAX_PAYLOAD {
            return vec![CLEAR_ALL.to_owned()];
        }
        match payloads.last_mut() {
            Some(last) if last.len() + 1 + token.len() <= MAX_PAYLOAD => {
                last.push(',');
                last.push_str(&token);
            }
            _ => payloads.push(token),
        }
    }
    payloads
}

/// Queues the notifications in the caller's transaction; Postgres sends them
/// when (and only if) it commits.
pub async fn notify(tx: &mut PgConnection, payloads: &[String]) -> sqlx::Result<()> {
    for payload in payloads {
        sqlx::query("select pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Tells readers what an applied batch changed, in its transaction: the
/// notifications read caches evict by and, when the change feed is on, the
/// feed's rows (whose lock is then held to commit, so call this last).
pub async fn announce(
    tx: &mut PgConnection,
    generation: &Generation,
    outcome: &BatchOutcome,
    feed_on: bool,
) -> sqlx::Result<()> {
    let notifications = payloads(
        outcome.changed_customers.iter().map(String::as_str),
        outcome.changed_external_ids.iter().map(String::as_str),
    );
    notify(tx, &notifications).await?;
    if feed_on {
        feed::record(tx, generation, &outcome.customer_changes).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_notify_limit() {
        let ids: Vec<String> = (0..1000).map(|i| format!("{i:036}")).collect();
        let payloads = payloads(ids.iter().map(String::as_str), ["usr_1"]);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let tokens: usize = payloads.iter().map(|p| p.split(',').count()).sum();
        assert_eq!(tokens, 1001);
    }

    #[test]
    fn an_id_that_cannot_be_named_clears_everything() {
        assert_eq!(super::payloads(["a,b"], []), vec![CLEAR_ALL.to_owned()]);
        assert!(super::payloads([], []).is_empty());
    }
}
