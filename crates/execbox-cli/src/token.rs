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
    /// Lifetime: seconds (`3600`) or with units (`1h`, `30m`, `2d`); default 1h.
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
    let d = crate::units::parse_duration(s).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let secs = i64::try_from(d.as_secs()).context("--ttl too large")?;
    anyhow::ensure!(secs > 0, "--ttl must be at least one second");
    Ok(secs)
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
    execbox_proto::new_run_id()
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
        assert_eq!(ttl_secs("1h30m").unwrap(), 5400);
    }
}
