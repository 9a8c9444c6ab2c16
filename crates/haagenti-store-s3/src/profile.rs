//! Static keys and region from the AWS shared profile files, which `object_store` does not
//! read: `~/.aws/credentials` (`[name]` sections) and `~/.aws/config` (`[profile name]`,
//! or `[default]`). `AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`
//! pick other ones. SSO, `role_arn` and `credential_process` profiles are not supported.

use std::path::PathBuf;

use crate::S3Credentials;

/// What one profile says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    pub(crate) credentials: Option<S3Credentials>,
    pub(crate) region: Option<String>,
}

impl Profile {
    /// Reads the selected profile; missing or unreadable files give an empty profile.
    pub(crate) fn load_from_env() -> Profile {
        let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        };
        Profile::parse(
            &name,
            &file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            &file("AWS_CONFIG_FILE", "config"),
        )
    }

    /// The profile `name` from the texts of the credentials and config files; keys in the
    /// credentials file win.
    pub(crate) fn parse(name: &str, credentials_file: &str, config_file: &str) -> Profile {
        let config_section = if name == "default" {
            "default".to_string()
        } else {
            format!("profile {name}")
        };
        let from_creds = section(credentials_file, name);
        let from_config = section(config_file, &config_section);
        let get = |key: &str| {
            lookup(&from_creds, key)
                .or_else(|| lookup(&from_config, key))
                .map(str::to_string)
        };
        let credentials = match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(access_key_id), Some(secret_access_key)) => Some(S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: get("aws_session_token"),
            }),
            _ => None,
        };
        Profile {
            credentials,
            region: lookup(&from_config, "region").map(str::to_string),
        }
    }
}

/// `key = value` pairs of section `[name]` of an INI text.
fn section<'a>(text: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
    let mut inside = false;
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == name;
        } else if inside {
            if let Some((k, v)) = line.split_once('=') {
                pairs.push((k.trim(), v.trim()));
            }
        }
    }
    pairs
}

fn lookup<'a>(pairs: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, v)| k.eq_ignore_ascii_case(key) && !v.is_empty())
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIALS: &str = "
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = secret-default

# a comment
[work]
aws_access_key_id=AKIAWORK
aws_secret_access_key=secret-work
aws_session_token = token-work
";
    const CONFIG: &str = "
[default]
region = eu-west-1

[profile work]
region = us-west-2

[profile keys-in-config]
aws_access_key_id = AKIACONFIG
aws_secret_access_key = secret-config
";

    #[test]
    fn default_profile() {
        let p = Profile::parse("default", CREDENTIALS, CONFIG);
        let c = p.credentials.unwrap();
        assert_eq!(c.access_key_id, "AKIADEFAULT");
        assert_eq!(c.secret_access_key, "secret-default");
        assert_eq!(c.session_token, None);
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn named_profile_reads_its_own_sections() {
        let p = Profile::parse("work", CREDENTIALS, CONFIG);
        let c = p.credentials.unwrap();
        assert_eq!(c.access_key_id, "AKIAWORK");
        assert_eq!(c.session_token.as_deref(), Some("token-work"));
        assert_eq!(p.region.as_deref(), Some("us-west-2"));

        let p = Profile::parse("keys-in-config", CREDENTIALS, CONFIG);
        assert_eq!(p.credentials.unwrap().access_key_id, "AKIACONFIG");
        assert_eq!(p.region, None);
    }

    #[test]
    fn missing_profile_or_files_are_empty() {
        assert_eq!(
            Profile::parse("nope", CREDENTIALS, CONFIG),
            Profile::default()
        );
        assert_eq!(Profile::parse("default", "", ""), Profile::default());
        // Half a key pair is no credentials.
        let p = Profile::parse("default", "[default]\naws_access_key_id = A\n", "");
        assert_eq!(p.credentials, None);
    }
}
