//! Job events across hosts sharing one database: every event this host's job service emits
//! is published (PostgreSQL `NOTIFY`, or MariaDB's `job_events` table — see
//! [`crate::store::EventFeed`]), and every event another host published is emitted here too,
//! marked [`JobEvent::relayed`], with the sequence number it had there. So a socket.io client
//! or a Discord follower on host A sees a job queued on B and run on C; an interrupt taken on
//! A reaches C's backend (C learns it from the relayed `Interrupted`); a job queued on B is
//! claimed by idle backends elsewhere at once. A lost notification costs only latency:
//! [`super::JobWatch`] catches up from the store, and so do subscribers told they lagged.
//!
//! Consumes every local event (a [`Subscription`]); emits the relayed ones into the hub.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{EventKind, JobEvent, JobId, JobService, Origin, Received};
use crate::store::MAX_PAYLOAD;

/// Longest text (an error, a reason) carried in a relayed event.
const MAX_TEXT: usize = 1000;
/// How long MariaDB keeps relayed events.
const KEEP: Duration = Duration::from_secs(60);
/// Most events gathered into one publication.
const BATCH: usize = 256;

/// Starts relaying for `service` when its database is shared; the tasks end with the service.
pub fn start(service: &Arc<JobService>) {
    if !service.store.is_shared() {
        return;
    }
    tokio::spawn(publish(Arc::downgrade(service), service.subscribe()));
    tokio::spawn(listen(Arc::downgrade(service)));
}

/// Publishes this host's events, in batches of what has piled up.
async fn publish(service: std::sync::Weak<JobService>, mut events: super::Subscription) {
    let mut pruned = tokio::time::Instant::now();
    loop {
        let first = match events.recv().await {
            Received::Event(event) => event,
            Received::Lagged(missed) => {
                tracing::warn!(
                    missed,
                    "job events not relayed to other hosts (they catch up from the store)"
                );
                continue;
            }
            Received::Closed => return,
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match events.try_recv() {
                Some(Received::Event(event)) => batch.push(event),
                _ => break,
            }
        }
        let Some(service) = service.upgrade() else {
            return;
        };
        let payloads = payloads(batch.iter().filter(|e| !e.relayed).map(encode));
        if let Err(err) = service
            .store
            .publish_events(service.host(), &payloads)
            .await
        {
            tracing::warn!(error = %err, "cannot relay job events to other hosts");
        }
        if pruned.elapsed() > KEEP / 6 {
            pruned = tokio::time::Instant::now();
            if let Err(err) = service.store.prune_events(KEEP).await {
                tracing::debug!(error = %err, "cannot prune relayed job events");
            }
        }
    }
}

/// JSON arrays of encoded events, each below [`MAX_PAYLOAD`] bytes.
fn payloads(events: impl Iterator<Item = Value>) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::from("[");
    for event in events {
        let text = event.to_string();
        if current.len() > 1 && current.len() + text.len() + 2 > MAX_PAYLOAD {
            current.push(']');
            out.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&text);
    }
    if current.len() > 1 {
        current.push(']');
        out.push(current);
    }
    out
}

/// Emits what other hosts published.
async fn listen(service: std::sync::Weak<JobService>) {
    let feed = match service.upgrade() {
        Some(service) => service.store.event_feed().await,
        None => return,
    };
    let mut feed = match feed {
        Ok(Some(feed)) => feed,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(error = %err, "cannot follow other hosts' job events");
            return;
        }
    };
    loop {
        let next = feed.next().await;
        let Some(service) = service.upgrade() else {
            return;
        };
        let payloads = match next {
            Ok(payloads) => payloads,
            Err(err) => {
                tracing::warn!(error = %err, "other hosts' job events are unreadable for now");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for payload in payloads {
            let Ok(Value::Array(events)) = serde_json::from_str::<Value>(&payload) else {
                tracing::debug!("a relayed payload that is not a list of events");
                continue;
            };
            for event in events.iter().filter_map(decode) {
                if *event.host != *service.host() {
                    service.accept_relayed(event).await;
                }
            }
        }
    }
}

fn clip(text: &str) -> String {
    text.chars().take(MAX_TEXT).collect()
}

/// One event on the wire: `h` host, `j` job, `s` sequence, `o` owner, `r` origin as stored,
/// `k` kind and its fields.
fn encode(event: &JobEvent) -> Value {
    let mut wire = json!({
        "h": &*event.host,
        "j": event.job.as_str(),
        "s": event.seq,
        "o": &*event.owner,
        "r": event.origin.to_stored(),
    });
    let fields = match &event.kind {
        EventKind::Queued => json!({"k": "queued"}),
        EventKind::Started { backend, attempt } => {
            json!({"k": "started", "backend": &**backend, "attempt": attempt})
        }
        EventKind::ModelChanged { model } => json!({"k": "model", "model": &**model}),
        EventKind::Progress {
            step,
            total,
            preview,
        } => json!({"k": "progress", "step": step, "total": total, "preview": preview}),
        EventKind::Finished { backend } => json!({"k": "finished", "backend": &**backend}),
        EventKind::Failed { error } => json!({"k": "failed", "error": clip(error)}),
        EventKind::Requeued { reason, revived } => {
            json!({"k": "requeued", "reason": clip(reason), "revived": revived})
        }
        EventKind::Interrupted { was_running } => {
            json!({"k": "interrupted", "was_running": was_running})
        }
    };
    if let (Value::Object(wire), Value::Object(fields)) = (&mut wire, fields) {
        wire.extend(fields);
    }
    wire
}

/// An event from the wire; `None` for anything malformed or of a kind this build lacks.
fn decode(wire: &Value) -> Option<JobEvent> {
    let text = |key: &str| wire[key].as_str();
    let shared = |key: &str| text(key).map(Arc::<str>::from);
    let kind = match text("k")? {
        "queued" => EventKind::Queued,
        "started" => EventKind::Started {
            backend: shared("backend")?,
            attempt: wire["attempt"].as_i64()?,
        },
        "model" => EventKind::ModelChanged {
            model: shared("model")?,
        },
        "progress" => EventKind::Progress {
            step: u32::try_from(wire["step"].as_u64()?).ok()?,
            total: u32::try_from(wire["total"].as_u64()?).ok()?,
            preview: wire["preview"].as_bool()?,
        },
        "finished" => EventKind::Finished {
            backend: shared("backend")?,
        },
        "failed" => EventKind::Failed {
            error: text("error")?.to_owned(),
        },
        "requeued" => EventKind::Requeued {
            reason: text("reason")?.to_owned(),
            revived: wire["revived"].as_bool()?,
        },
        "interrupted" => EventKind::Interrupted {
            was_running: wire["was_running"].as_bool()?,
        },
        _ => return None,
    };
    Some(JobEvent {
        job: JobId::from(text("j")?),
        seq: wire["s"].as_i64()?,
        owner: shared("o")?,
        origin: Arc::new(Origin::parse(Some(text("r")?))),
        host: shared("h")?,
        relayed: true,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> JobEvent {
        JobEvent {
            job: JobId::from("0a1b2c3d"),
            seq: 7,
            owner: Arc::from("1234"),
            origin: Arc::new(Origin::Discord {
                channel: 10,
                message: Some(11),
                user: None,
            }),
            host: Arc::from("host-b"),
            relayed: false,
            kind,
        }
    }

    #[test]
    fn every_kind_crosses_the_wire() {
        let kinds = [
            EventKind::Queued,
            EventKind::Started {
                backend: Arc::from("simulated"),
                attempt: 2,
            },
            EventKind::ModelChanged {
                model: Arc::from("sdxl"),
            },
            EventKind::Progress {
                step: 3,
                total: 20,
                preview: true,
            },
            EventKind::Finished {
                backend: Arc::from("forge"),
            },
            EventKind::Failed {
                error: "boom".into(),
            },
            EventKind::Requeued {
                reason: "lease".into(),
                revived: true,
            },
            EventKind::Interrupted { was_running: true },
        ];
        for kind in kinds {
            let sent = event(kind);
            let text = payloads(std::iter::once(encode(&sent)));
            let wire: Value = serde_json::from_str(&text[0]).unwrap();
            let got = decode(&wire[0]).unwrap();
            assert!(got.relayed);
            assert_eq!(
                JobEvent {
                    relayed: false,
                    ..got
                },
                sent
            );
        }
        assert!(
            decode(&json!({"k": "teleported", "j": "x", "s": 1, "o": "", "r": "", "h": ""}))
                .is_none()
        );
    }

    #[test]
    fn payloads_stay_below_the_notify_limit() {
        let long = event(EventKind::Failed {
            error: "x".repeat(5000),
        });
        let many: Vec<Value> = (0..100).map(|_| encode(&long)).collect();
        let out = payloads(many.into_iter());
        assert!(out.len() > 10);
        let mut total = 0;
        for payload in &out {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            total += serde_json::from_str::<Vec<Value>>(payload).unwrap().len();
        }
        assert_eq!(total, 100);
    }
}
