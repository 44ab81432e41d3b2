//! `[admin]`: the operator surface under `/admin` and its bearer token.

use serde::{Deserialize, Serialize};

use super::{Invalid, Secret};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Bearer token for `/admin`; empty = the admin routes are not mounted at all.
    pub token: Secret,
}

impl AdminSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let token = self.token.expose();
        if self.token.is_set()
            && (token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(Invalid::new(
                "admin.token",
                "must be at least 16 characters, without spaces",
            ));
        }
        Ok(())
    }
}
