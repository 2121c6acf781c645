//! easel's default access plugin: who may use the bot, and where (compat.md §1.7).
//!
//! Stably Discordant's rules, checked per message rather than once at start-up:
//! - never the bot's own messages;
//! - over HTTP, a caller whose role is at least `http_min_role` (default 1, apprentice);
//! - in Discord DMs only when `allow_dms` is true (default false; the seed never answered DMs);
//! - in a guild, the channel `"{guild}:{channel}"` must be in `listen_channels` when that is
//!   non-empty, else not in `ignore_channels`;
//! - on Discord, the user `name#discriminator` must be in `listen_users` when that is
//!   non-empty, else not in `ignore_users`; a caller with an empty `user-id` asks about the
//!   place alone (easel does so to find the channels it greets with `I'm here!`).
//!
//! Every comparison is case-sensitive, like the seed's. A denial names the rule that refused.

wit_bindgen::generate!({
    path: "../../wit",
    world: "access-plugin",
});

use easel::plugin::host;
use easel::plugin::types::{Caller, FrontEnd};
use exports::easel::plugin::access::{Decision, Guest};
use guest_kit::Settings;

struct Access;

fn settings() -> Settings {
    Settings::new(host::config()).on_error(|err| {
        host::log(host::Level::Warn, &format!("{err}; using the default"));
    })
}

/// A listen/ignore pair of lists: `Some(reason)` when `key` is refused.
fn listed(
    what: &str,
    key: &str,
    settings: &Settings,
    listen: &str,
    ignore: &str,
) -> Option<String> {
    let listen_list = settings.list(listen, &[]);
    if !listen_list.is_empty() {
        return (!listen_list.iter().any(|k| k == key))
            .then(|| format!("{what} {key} is not in {listen}"));
    }
    settings
        .list(ignore, &[])
        .iter()
        .any(|k| k == key)
        .then(|| format!("{what} {key} is in {ignore}"))
}

fn decide(caller: &Caller, settings: &Settings) -> Result<(), String> {
    if caller.is_self {
        return Err("the bot's own message".to_owned());
    }
    match caller.front_end {
        FrontEnd::Http => {
            let min = settings.u64("http_min_role", 1);
            if u64::from(caller.role) < min {
                return Err(format!("role {} is below http_min_role {min}", caller.role));
            }
            Ok(())
        }
        FrontEnd::Discord => {
            if caller.is_dm {
                if !settings.bool("allow_dms", false) {
                    return Err("direct messages are off".to_owned());
                }
            } else {
                let channel = format!("{}:{}", caller.guild, caller.channel);
                if let Some(reason) = listed(
                    "channel",
                    &channel,
                    settings,
                    "listen_channels",
                    "ignore_channels",
                ) {
                    return Err(reason);
                }
            }
            if caller.user_id.is_empty() {
                return Ok(());
            }
            match listed(
                "user",
                &caller.user_tag,
                settings,
                "listen_users",
                "ignore_users",
            ) {
                Some(reason) => Err(reason),
                None => Ok(()),
            }
        }
    }
}

impl Guest for Access {
    fn check(caller: Caller) -> Decision {
        match decide(&caller, &settings()) {
            Ok(()) => Decision::Allow,
            Err(reason) => Decision::Deny(reason),
        }
    }
}

export!(Access);
