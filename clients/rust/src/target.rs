//! Where the sidecar lives and how to reach it when nobody says otherwise.
//!
//! The same rules as the Python client (`recorder_common/defaults.py`), so that
//! `agent-recorder serve` and every client find each other without flags:
//! `$AGENT_RECORDER_TARGET`, else the owner-only Unix socket
//! `$XDG_RUNTIME_DIR/agent-recorder/recorder.sock` (or
//! `$XDG_DATA_HOME/agent-recorder/run/recorder.sock`, `~/.local/share/...` by default).

use std::path::{Path, PathBuf};

use crate::error::ConnectError;

/// The address clients dial.
pub const TARGET_ENV: &str = "AGENT_RECORDER_TARGET";
/// The bearer token every call carries.
pub const TOKEN_ENV: &str = "AGENT_RECORDER_TOKEN";
/// A file holding the bearer token (keeps it out of the process environment).
pub const TOKEN_FILE_ENV: &str = "AGENT_RECORDER_TOKEN_FILE";
/// PEM file of the CA that signed the server's certificate.
pub const TLS_CA_ENV: &str = "AGENT_RECORDER_TLS_CA";
/// PEM certificate chain of the client, for mTLS.
pub const TLS_CERT_ENV: &str = "AGENT_RECORDER_TLS_CERT";
/// PEM private key of the client, for mTLS.
pub const TLS_KEY_ENV: &str = "AGENT_RECORDER_TLS_KEY";

/// Reads one environment variable; empty counts as unset, as in the Python client.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn data_dir(env: Env<'_>) -> PathBuf {
    let base = env("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let home = env("HOME").unwrap_or_else(|| "/".to_string());
        Path::new(&home).join(".local").join("share")
    });
    base.join("agent-recorder")
}

fn runtime_dir(env: Env<'_>) -> PathBuf {
    match env("XDG_RUNTIME_DIR") {
        Some(runtime) => Path::new(&runtime).join("agent-recorder"),
        None => data_dir(env).join("run"),
    }
}

/// `$AGENT_RECORDER_TARGET`, or the default Unix socket as `unix:///path`.
pub fn default_target() -> String {
    default_target_in(&process_env)
}

pub(crate) fn default_target_in(env: Env<'_>) -> String {
    env(TARGET_ENV).unwrap_or_else(|| {
        format!(
            "unix://{}",
            runtime_dir(env).join("recorder.sock").display()
        )
    })
}

/// The target as an endpoint URI: `unix:///path`, `unix:/path` and bare socket paths
/// become `unix:` URIs, `host:port` becomes `http://host:port` (`https://` with TLS).
pub fn normalize_target(address: &str, tls: bool) -> Result<String, ConnectError> {
    if address.is_empty() {
        return Err(ConnectError::Target("empty address".into()));
    }
    if let Some(path) = address.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        return Ok(format!("unix://{path}"));
    }
    if address.starts_with('/') || address.starts_with('.') {
        let absolute = std::path::absolute(address)
            .map_err(|error| ConnectError::Target(format!("{address}: {error}")))?;
        return Ok(format!("unix://{}", absolute.display()));
    }
    if address.starts_with("http://") || address.starts_with("https://") {
        return Ok(address.to_string());
    }
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{address}"))
}

/// `$AGENT_RECORDER_TOKEN`, else the contents of the file `$AGENT_RECORDER_TOKEN_FILE`
/// names (surrounding whitespace stripped), else none.
pub fn default_token() -> Result<Option<String>, ConnectError> {
    default_token_in(&process_env)
}

pub(crate) fn default_token_in(env: Env<'_>) -> Result<Option<String>, ConnectError> {
    if let Some(token) = env(TOKEN_ENV) {
        return Ok(Some(token));
    }
    match env(TOKEN_FILE_ENV) {
        Some(path) => read_token_file(Path::new(&path)).map(Some),
        None => Ok(None),
    }
}

/// A token file holds the token alone: a final newline is not part of it.
pub fn read_token_file(path: &Path) -> Result<String, ConnectError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .map_err(|source| ConnectError::File {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).filter(|v| !v.is_empty()).cloned()
    }

    #[test]
    fn the_target_variable_wins() {
        let env = env_of(&[
            (TARGET_ENV, "127.0.0.1:5000"),
            ("XDG_RUNTIME_DIR", "/run/u"),
        ]);
        assert_eq!(default_target_in(&env), "127.0.0.1:5000");
    }

    #[test]
    fn the_default_socket_follows_the_xdg_layout() {
        let env = env_of(&[("XDG_RUNTIME_DIR", "/run/user/7"), ("HOME", "/home/a")]);
        assert_eq!(
            default_target_in(&env),
            "unix:///run/user/7/agent-recorder/recorder.sock"
        );
        let env = env_of(&[("XDG_DATA_HOME", "/data"), ("HOME", "/home/a")]);
        assert_eq!(
            default_target_in(&env),
            "unix:///data/agent-recorder/run/recorder.sock"
        );
        let env = env_of(&[("HOME", "/home/a"), (TARGET_ENV, "")]);
        assert_eq!(
            default_target_in(&env),
            "unix:///home/a/.local/share/agent-recorder/run/recorder.sock"
        );
    }

    #[test]
    fn targets_normalize_like_the_python_client() {
        let cases = [
            ("unix:///tmp/r.sock", "unix:///tmp/r.sock"),
            ("unix:/tmp/r.sock", "unix:///tmp/r.sock"),
            ("/tmp/r.sock", "unix:///tmp/r.sock"),
            ("127.0.0.1:50551", "http://127.0.0.1:50551"),
            ("http://h:1", "http://h:1"),
        ];
        for (given, expected) in cases {
            assert_eq!(normalize_target(given, false).unwrap(), expected, "{given}");
        }
        assert_eq!(normalize_target("h:1", true).unwrap(), "https://h:1");
        assert!(matches!(
            normalize_target("", false),
            Err(ConnectError::Target(_))
        ));
    }

    #[test]
    fn the_token_comes_from_the_variable_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let path = file.to_str().unwrap();
        let env = env_of(&[(TOKEN_ENV, "direct"), (TOKEN_FILE_ENV, path)]);
        assert_eq!(default_token_in(&env).unwrap().as_deref(), Some("direct"));
        let env = env_of(&[(TOKEN_FILE_ENV, path)]);
        assert_eq!(default_token_in(&env).unwrap().as_deref(), Some("s3cret"));
        assert_eq!(default_token_in(&env_of(&[])).unwrap(), None);
        let env = env_of(&[(TOKEN_FILE_ENV, "/nonexistent/token")]);
        let error = default_token_in(&env).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/token"), "{error}");
    }
}
