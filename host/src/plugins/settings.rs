//! What the operator decides about plugins in `config.toml`: which plugin serves each role,
//! each plugin's own settings, and what happens when a plugin fails.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, FailurePolicy};

/// A policy role: one WIT interface, served by one plugin at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads chat messages (`parser`).
    Parser,
    /// Decides who may use the bot (`access`).
    Access,
    /// Decides how the bot shows progress (`reactions`).
    Reactions,
    /// Decides models and limits (`model-policy`).
    ModelPolicy,
}

impl Role {
    /// Every role, in pipeline order.
    pub const ALL: [Role; 4] = [
        Role::Access,
        Role::Parser,
        Role::ModelPolicy,
        Role::Reactions,
    ];

    /// The interface name, which is also the name of its default plugin.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Parser => "parser",
            Role::Access => "access",
            Role::Reactions => "reactions",
            Role::ModelPolicy => "model-policy",
        }
    }

    /// The fully qualified interface a component exports for this role.
    pub fn interface(self, version: super::WitVersion) -> String {
        format!("easel:plugin/{}@{}", self.as_str(), version.as_str())
    }

    /// The default plugin of this role, embedded in the binary: what the `builtin` failure
    /// policy falls back to, and what serves the role when no file does.
    pub fn builtin(self) -> &'static [u8] {
        match self {
            Role::Parser => include_bytes!("../../../plugins/parser.wasm"),
            Role::Access => include_bytes!("../../../plugins/access.wasm"),
            Role::Reactions => include_bytes!("../../../plugins/reactions.wasm"),
            Role::ModelPolicy => include_bytes!("../../../plugins/model-policy.wasm"),
        }
    }

    /// The keys of the seed's configuration that this role's plugin receives.
    pub fn seed_keys(self) -> &'static [&'static str] {
        match self {
            Role::Parser => &["wake_word"],
            Role::Access => &[
                "listen_channels",
                "ignore_channels",
                "listen_users",
                "ignore_users",
                "allow_dms",
            ],
            Role::Reactions => &["ack_emoji", "in_prog_emoji", "done_emoji"],
            Role::ModelPolicy => &[],
        }
    }

    /// The role named `name`.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Settings handed to plugins: a list of key/value pairs, values as TOML text (strings bare).
pub type PluginConfig = Arc<Vec<(String, String)>>;

/// The plugin part of the configuration, as the registry uses it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PluginSettings {
    roles: HashMap<Role, String>,
    base: PluginConfig,
    plugins: HashMap<String, (PluginConfig, FailurePolicy)>,
}

/// A TOML value as a plugin receives it: strings without quotes, the rest as TOML.
fn toml_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl PluginSettings {
    /// From `config.toml`: `[plugins.roles]`, `[plugins.<name>]` tables, and the seed's
    /// `[discord.settings]` and `[discord.style]` keys plus `[discord] allow_dms`: a plugin
    /// receives those its roles read ([`Role::seed_keys`]; all of them when it serves no role),
    /// then its own table (which wins).
    pub fn from_config(config: &Config) -> Self {
        let mut base = Vec::new();
        for section in [
            toml::Table::try_from(&config.discord.settings),
            toml::Table::try_from(&config.discord.style),
        ] {
            for (key, value) in section.expect("discord settings serialize") {
                base.push((key, toml_text(&value)));
            }
        }
        base.push(("allow_dms".to_owned(), config.discord.allow_dms.to_string()));
        let roles = &config.plugins.roles;
        let roles = HashMap::from([
            (Role::Parser, roles.parser.clone()),
            (Role::Access, roles.access.clone()),
            (Role::Reactions, roles.reactions.clone()),
            (Role::ModelPolicy, roles.model_policy.clone()),
        ]);
        let mut settings = Self {
            roles,
            base: Arc::new(base),
            plugins: HashMap::new(),
        };
        // Every plugin named for a role or configured gets the seed keys of its roles (all of
        // them when it serves none) under its own table.
        let mut names: Vec<&str> = settings.roles.values().map(String::as_str).collect();
        names.extend(Role::ALL.iter().map(|r| r.as_str()));
        names.extend(config.plugins.settings.keys().map(String::as_str));
        let mut plugins = HashMap::new();
        for name in names {
            let roles = settings.roles_of(name);
            let mut pairs: Vec<(String, String)> = settings
                .base
                .iter()
                .filter(|(key, _)| {
                    roles.is_empty() || roles.iter().any(|r| r.seed_keys().contains(&key.as_str()))
                })
                .cloned()
                .collect();
            let table = config.plugins.settings.get(name);
            let policy = table.and_then(|t| t.on_failure).unwrap_or_default();
            for (key, value) in table.map(|t| &t.values).into_iter().flatten() {
                pairs.retain(|(k, _)| k != key);
                pairs.push((key.clone(), toml_text(value)));
            }
            plugins.insert(name.to_owned(), (Arc::new(pairs), policy));
        }
        settings.plugins = plugins;
        settings
    }

    /// The plugin named to serve `role` ("" means the built-in default).
    pub fn plugin_for(&self, role: Role) -> &str {
        self.roles.get(&role).map_or(role.as_str(), String::as_str)
    }

    /// The roles `name` is named for.
    pub fn roles_of(&self, name: &str) -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|r| self.plugin_for(*r) == name)
            .collect()
    }

    /// What `host.config` returns to the plugin `name`.
    pub fn config_for(&self, name: &str) -> PluginConfig {
        self.plugins
            .get(name)
            .map_or_else(|| self.base.clone(), |(config, _)| config.clone())
    }

    /// The failure policy of the plugin `name`.
    pub fn on_failure(&self, name: &str) -> FailurePolicy {
        self.plugins
            .get(name)
            .map_or_else(FailurePolicy::default, |(_, policy)| *policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_override_the_seed_keys() {
        let config = Config::parse(
            r#"
            [discord.settings]
            wake_word = "!draw"
            listen_channels = ["Guild:art"]
            [plugins.roles]
            parser = "parser-extended"
            [plugins.parser-extended]
            wake_word = "/paint"
            on_failure = "fail-open"
            "#,
            std::path::Path::new("config.toml"),
        )
        .unwrap();
        let settings = PluginSettings::from_config(&config);
        assert_eq!(settings.plugin_for(Role::Parser), "parser-extended");
        assert_eq!(settings.plugin_for(Role::Access), "access");
        let get = |name: &str, key: &str| {
            settings
                .config_for(name)
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("parser", "wake_word").as_deref(), Some("!draw"));
        // Only the keys of its roles: the access lists do not go to the parser.
        assert_eq!(get("parser-extended", "listen_channels"), None);
        assert_eq!(get("model-policy", "wake_word"), None);
        assert_eq!(
            get("parser-extended", "wake_word").as_deref(),
            Some("/paint")
        );
        assert_eq!(
            get("access", "listen_channels").as_deref(),
            Some(r#"["Guild:art"]"#)
        );
        assert_eq!(get("parser-extended", "on_failure"), None);
        assert_eq!(
            settings.on_failure("parser-extended"),
            FailurePolicy::FailOpen
        );
        assert_eq!(settings.on_failure("access"), FailurePolicy::Builtin);
        assert_eq!(settings.roles_of("parser-extended"), vec![Role::Parser]);
    }
}
