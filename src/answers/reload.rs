//! What Postgres holds now for a cached key, loaded exactly as a fill would load it: the
//! consistency auditor's reference.

use super::{loaders, Answers};
use crate::cache::{CacheKey, Kind, LoadFuture};
use crate::domain::{Channel, PhoneNumber};

impl Answers {
    /// The load a fill of `key` would run (nothing is stored); `None` if the key's text names
    /// no lookup (a key written by something else).
    pub fn reload(&self, key: &CacheKey) -> Option<LoadFuture> {
        let s = self.store.clone();
        let text = key.as_str();
        let rest = |prefix: &str| text.strip_prefix(prefix);
        Some(match key.kind() {
            Kind::LeadById => {
                let id = rest("lead:id:")?.parse().ok()?;
                loaders::row(async move { s.lead_by_id(id).await })
            }
            Kind::OrgById => {
                let id = rest("org:id:")?.parse().ok()?;
                loaders::row(async move { s.org_by_id(id).await })
            }
            Kind::OrgByPhone => {
                let phone = PhoneNumber::from_e164_unchecked(rest("org:phone:")?);
                loaders::row(async move { s.org_by_phone(&phone).await })
            }
            Kind::LeadByPhone => {
                let (phone, org) = rest("lead:phone:")?.rsplit_once(':')?;
                let (phone, org) = (PhoneNumber::from_e164_unchecked(phone), org.parse().ok()?);
                loaders::row(async move { s.lead_by_phone(&phone, org).await })
            }
            Kind::Context => loaders::context(s, rest("context:")?.parse().ok()?),
            Kind::Summary => loaders::summary(s, rest("summary:")?.parse().ok()?),
            Kind::Greeting => {
                let (lead, channel) = rest("greeting:")?.split_once(':')?;
                let channel: Channel = channel.parse().ok()?;
                loaders::greeting(s, lead.parse().ok()?, channel)
            }
            Kind::History => {
                let mut parts = rest("history:")?.split(':');
                let lead = parts.next()?.parse().ok()?;
                let limit = parts.next()?.parse().ok()?;
                let offset = parts.next()?.parse().ok()?;
                loaders::history(s, lead, limit, offset)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Answers;
    use crate::cache::{CacheKey, Local, Tiered};
    use crate::domain::{Channel, LeadId, OrgId, PhoneNumber};
    use crate::metrics::Metrics;
    use crate::store::Store;

    /// Answers over a pool that never connects (nothing here runs a load).
    fn answers() -> Answers {
        let metrics = Metrics::new();
        let settings = crate::config::Settings::default();
        let store = Store::new(
            &settings.postgres.store_config("test").unwrap(),
            metrics.clone(),
        );
        let cache = Tiered::new(
            Local::new(false, 0),
            None,
            settings.cache.policies(),
            metrics,
        );
        Answers::new(Arc::new(cache), store)
    }

    /// Every key a lookup builds parses back into the load it came from (checked through the
    /// parts `reload` reads, so this needs no database).
    #[tokio::test]
    async fn every_kind_of_key_names_its_load() {
        let answers = answers();
        let (lead, org) = (LeadId::new_random(), OrgId::new_random());
        let phone = PhoneNumber::from_e164_unchecked("+15550100001");
        let keys = [
            CacheKey::lead_by_id(lead),
            CacheKey::org_by_id(org),
            CacheKey::org_by_phone(&phone),
            CacheKey::lead_by_phone(&phone, org),
            CacheKey::context(lead),
            CacheKey::summary(lead),
            CacheKey::greeting(lead, Channel::Voice),
            CacheKey::history(lead, 20, 40),
        ];
        for k in keys {
            let text = k.as_str();
            let back = CacheKey::parse(text).expect("parses");
            assert_eq!(back.kind(), k.kind(), "{text}");
            assert!(answers.reload(&k).is_some(), "{text}");
        }
        for junk in [
            "lead:id:nope",
            "greeting:x",
            "history:1:2",
            "lead:phone:+1555",
        ] {
            if let Some(k) = CacheKey::parse(junk) {
                assert!(answers.reload(&k).is_none(), "{junk}");
            }
        }
    }
}
