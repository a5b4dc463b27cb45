//! `execbox token`: mint a development token.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use execbox_server::auth::{mint, Claims};

/// Flags of `execbox token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user id the token names (`user_id` claim).
    #[arg(long)]
    user_id: String,
    /// Lifetime, e.g. `1h`, `30m`, `3600s` (default 1h).
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// `user_full_name` claim.
    #[arg(long)]
    name: Option<String>,
    /// `user_email` claim.
    #[arg(long)]
    email: Option<String>,
}

fn ttl_secs(s: &str) -> Result<i64> {
    let s = s.trim();
    let (n, mult) = match s.chars().last() {
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('s') => (&s[..s.len() - 1], 1),
        Some('d') => (&s[..s.len() - 1], 86_400),
        _ => (s, 1),
    };
    let v: i64 = n.parse().with_context(|| format!("invalid --ttl {s:?}"))?;
    anyhow::ensure!(v > 0, "--ttl must be positive");
    Ok(v * mult)
}

/// Print a token for `a.user_id`.
pub fn token(a: TokenArgs) -> Result<ExitCode> {
    let secret = std::env::var("APP_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .context("APP_JWT_SECRET is not set: the token is signed with the server's secret")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let claims = Claims {
        user_id: Some(a.user_id),
        sub: None,
        user_full_name: a.name,
        user_email: a.email,
        jti: Some(uuid_v4()),
        iat: Some(now),
        nbf: Some(now),
        exp: now + ttl_secs(&a.ttl)?,
    };
    println!("{}", mint(secret.as_bytes(), &claims)?);
    Ok(ExitCode::SUCCESS)
}

fn uuid_v4() -> String {
    execbox_runtime::new_run_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(ttl_secs("1h").unwrap(), 3600);
        assert_eq!(ttl_secs("90").unwrap(), 90);
        assert_eq!(ttl_secs("2d").unwrap(), 172_800);
        assert!(ttl_secs("0").is_err());
        assert!(ttl_secs("x").is_err());
    }
}
