//! `[discord] progress`: one message per job that follows its steps ("⏱️ step 12/30", with the
//! live preview attached when the backend made one), edited at most once every
//! [`EDIT_EVERY`], and taken away when the job ends so the result is answered exactly as
//! without it.
//!
//! For a message (or a channel), the progress message is a reply of its own, deleted when the
//! job ends; the result is then posted as a new reply, so the final reply keeps the seed's
//! shape. For `/art`, the deferred reply (the interaction's original response, which says
//! "Queued …") is what is edited; when the job ends it is edited back to that acknowledgement
//! (without the preview) and the result follows as a follow-up, as without progress. Nothing is
//! edited once the end is handled: the job's events are shown one at a time, and the end is the
//! last one. Every call goes through the messenger's client, so its rate limiter applies.

use std::time::{Duration, Instant};

use twilight_model::http::attachment::Attachment;
use twilight_model::id::Id;
use twilight_model::id::marker::{ChannelMarker, MessageMarker};

use super::Bot;
use super::flow::{TOKEN_LIFETIME, Target};
use super::messenger::counted;

/// The shortest time between two edits of one progress message.
pub(super) const EDIT_EVERY: Duration = Duration::from_secs(2);

/// At most one edit per period: pure, the caller tells the time. The period runs from the end
/// of the previous edit (when Discord answered), so edits that a rate limit held back still
/// arrive at least a period apart.
#[derive(Clone, Copy, Debug)]
pub(super) struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    /// Lets the first edit through at once, then one per `every`.
    pub(super) const fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Whether an edit may start at `now`.
    pub(super) fn ready(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every)
    }

    /// Records an edit that ended at `at` (sent, or given up on).
    pub(super) fn done(&mut self, at: Instant) {
        self.last = Some(at);
    }
}

/// A followed job's progress message.
#[derive(Debug)]
pub(super) struct ProgressMessage {
    throttle: Throttle,
    /// The message posted for a message or channel target.
    posted: Option<(Id<ChannelMarker>, Id<MessageMarker>)>,
    /// For `/art`: what the deferred reply said before progress was shown in it.
    ack: Option<String>,
    /// Whether an interaction's original response shows progress now.
    edited_original: bool,
    /// A preview was made since the last edit (the store keeps the latest).
    new_preview: bool,
}

impl ProgressMessage {
    /// `ack`: the acknowledgement a `/art` deferred reply shows, restored at the end.
    pub(super) fn new(ack: Option<String>) -> Self {
        Self {
            throttle: Throttle::new(EDIT_EVERY),
            posted: None,
            ack,
            edited_original: false,
            new_preview: false,
        }
    }
}

/// The progress text.
pub(super) fn progress_text(step: u32, total: u32) -> String {
    format!("⏱️ step {step}/{total}")
}

impl Bot {
    /// Shows a step, if the throttle lets an edit go now, with the latest preview if one was
    /// made since the last edit.
    pub(super) async fn show_progress(
        &self,
        target: &Target,
        progress: &mut ProgressMessage,
        job_id: &str,
        (step, total, preview): (u32, u32, bool),
    ) {
        progress.new_preview |= preview;
        if !progress.throttle.ready(Instant::now()) {
            return;
        }
        let png = if std::mem::take(&mut progress.new_preview) {
            match self.jobs.preview_png(job_id).await {
                Ok(png) => png,
                Err(err) => {
                    tracing::debug!(job_id, error = %err, "cannot read a preview");
                    None
                }
            }
        } else {
            None
        };
        let files: Vec<Attachment> = png
            .map(|png| Attachment::from_bytes(format!("{job_id}-preview.png"), png, 1))
            .into_iter()
            .collect();
        let text = progress_text(step, total);
        let sent = match (target, progress.posted) {
            (Target::Message { channel, .. } | Target::Channel { channel }, Some((_, id))) => {
                counted(
                    self.http()
                        .update_message(*channel, id)
                        .content(Some(&text))
                        .attachments(&files)
                        .into_future(),
                    None,
                )
                .await
                .map(drop)
            }
            (Target::Message { channel, message }, None) => {
                let created = counted(
                    self.http()
                        .create_message(*channel)
                        .reply(*message)
                        .content(&text)
                        .attachments(&files)
                        .into_future(),
                    None,
                )
                .await;
                self.remember(progress, *channel, created).await
            }
            (Target::Channel { channel }, None) => {
                let created = counted(
                    self.http()
                        .create_message(*channel)
                        .content(&text)
                        .attachments(&files)
                        .into_future(),
                    None,
                )
                .await;
                self.remember(progress, *channel, created).await
            }
            (
                Target::Interaction {
                    application,
                    token,
                    created,
                    ..
                },
                _,
            ) => {
                if created.elapsed() >= TOKEN_LIFETIME {
                    return; // The token is gone; the result goes to the channel.
                }
                progress.edited_original = true;
                counted(
                    self.http()
                        .interaction(*application)
                        .update_response(token)
                        .content(Some(&text))
                        .attachments(&files)
                        .into_future(),
                    None,
                )
                .await
                .map(drop)
            }
        };
        if let Err(err) = sent {
            tracing::warn!(job_id, error = %err, "cannot show a job's progress");
        }
        progress.throttle.done(Instant::now());
    }

    async fn remember(
        &self,
        progress: &mut ProgressMessage,
        channel: Id<ChannelMarker>,
        created: Result<
            twilight_http::Response<twilight_model::channel::Message>,
            twilight_http::Error,
        >,
    ) -> Result<(), twilight_http::Error> {
        match created?.model().await {
            Ok(message) => progress.posted = Some((channel, message.id)),
            Err(err) => tracing::warn!(error = %err, "unreadable progress message"),
        }
        Ok(())
    }

    /// The job ended: the progress message goes away (a posted one is deleted, an edited
    /// `/art` reply shows its acknowledgement again), before the result is answered.
    pub(super) async fn end_progress(&self, target: &Target, progress: &mut ProgressMessage) {
        if let Some((channel, message)) = progress.posted.take()
            && let Err(err) = counted(
                self.http().delete_message(channel, message).into_future(),
                None,
            )
            .await
        {
            tracing::warn!(error = %err, "cannot delete a progress message");
        }
        if !std::mem::take(&mut progress.edited_original) {
            return;
        }
        let Target::Interaction {
            application,
            token,
            created,
            ..
        } = target
        else {
            return;
        };
        if created.elapsed() >= TOKEN_LIFETIME {
            return;
        }
        let ack = progress.ack.clone().unwrap_or_default();
        if let Err(err) = counted(
            self.http()
                .interaction(*application)
                .update_response(token)
                .content(Some(&ack))
                .keep_attachment_ids(&[])
                .into_future(),
            None,
        )
        .await
        {
            tracing::warn!(error = %err, "cannot restore an interaction response");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_edit_goes_at_once() {
        let throttle = Throttle::new(EDIT_EVERY);
        assert!(throttle.ready(Instant::now()));
    }

    #[test]
    fn one_edit_per_period_from_the_end_of_the_last() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(2));
        throttle.done(t0);
        assert!(!throttle.ready(t0));
        assert!(!throttle.ready(t0 + Duration::from_millis(1999)));
        assert!(throttle.ready(t0 + Duration::from_secs(2)));
        assert!(throttle.ready(t0 + Duration::from_secs(7)));
        // An edit that ended late pushes the next one back.
        throttle.done(t0 + Duration::from_secs(3));
        assert!(!throttle.ready(t0 + Duration::from_millis(4999)));
        assert!(throttle.ready(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_clock_before_the_last_edit_waits() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut throttle = Throttle::new(Duration::from_secs(2));
        throttle.done(t0);
        assert!(!throttle.ready(t0 - Duration::from_secs(5)));
    }

    #[test]
    fn a_zero_period_never_holds_back() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(Duration::ZERO);
        throttle.done(t0);
        assert!(throttle.ready(t0));
    }

    #[test]
    fn the_text_says_the_step() {
        assert_eq!(progress_text(12, 30), "⏱️ step 12/30");
    }
}
