//! What every lookup answers and how the call initiation is put together: the read path that the
//! HTTP API and the voice platforms' webhook adapters share. Each lookup reads through the cache
//! with its kind's loader; nothing here knows about HTTP.

mod initiation;
mod loaders;
mod reload;
mod views;

use std::sync::Arc;

pub use initiation::{combine, Initiation, KnownCaller};
pub use views::{dynamic_variables, greeting_text, Context, Greeting, History, Summary};

use crate::cache::{CacheError, CacheKey, LoadFuture, Lookup, Mode, Tag, Tiered};
use crate::domain::{Channel, LeadId, OrgId, PhoneNumber};
use crate::store::Store;

/// The lookups, over the shared cache and store. Cheap to clone.
#[derive(Clone)]
pub struct Answers {
    cache: Arc<Tiered>,
    store: Store,
}

impl Answers {
    pub fn new(cache: Arc<Tiered>, store: Store) -> Self {
        Answers { cache, store }
    }

    pub async fn org_by_id(&self, id: OrgId, mode: Mode) -> Result<Lookup, CacheError> {
        let store = self.store.clone();
        let load = move || loaders::row(async move { store.org_by_id(id).await });
        self.cache
            .get(&CacheKey::org_by_id(id), &[], mode, load)
            .await
    }

    pub async fn org_by_phone(
        &self,
        phone: &PhoneNumber,
        mode: Mode,
    ) -> Result<Lookup, CacheError> {
        let (store, p) = (self.store.clone(), phone.clone());
        let load = move || loaders::row(async move { store.org_by_phone(&p).await });
        self.cache
            .get(&CacheKey::org_by_phone(phone), &[], mode, load)
            .await
    }

    pub async fn lead_by_id(&self, id: LeadId, mode: Mode) -> Result<Lookup, CacheError> {
        let store = self.store.clone();
        let load = move || loaders::row(async move { store.lead_by_id(id).await });
        self.cache
            .get(&CacheKey::lead_by_id(id), &[], mode, load)
            .await
    }

    pub async fn lead_by_phone(
        &self,
        phone: &PhoneNumber,
        org: OrgId,
        mode: Mode,
    ) -> Result<Lookup, CacheError> {
        let (store, p) = (self.store.clone(), phone.clone());
        let load = move || loaders::row(async move { store.lead_by_phone(&p, org).await });
        self.cache
            .get(&CacheKey::lead_by_phone(phone, org), &[], mode, load)
            .await
    }

    pub async fn context(&self, id: LeadId, mode: Mode) -> Result<Lookup, CacheError> {
        self.org_dependent(id, CacheKey::context(id), mode, move |s| {
            loaders::context(s, id)
        })
        .await
    }

    pub async fn summary(&self, id: LeadId, mode: Mode) -> Result<Lookup, CacheError> {
        let store = self.store.clone();
        self.cache
            .get(&CacheKey::summary(id), &[], mode, move || {
                loaders::summary(store, id)
            })
            .await
    }

    pub async fn greeting(
        &self,
        id: LeadId,
        channel: Channel,
        mode: Mode,
    ) -> Result<Lookup, CacheError> {
        self.org_dependent(id, CacheKey::greeting(id, channel), mode, move |s| {
            loaders::greeting(s, id, channel)
        })
        .await
    }

    pub async fn history(
        &self,
        id: LeadId,
        limit: u32,
        offset: u32,
        mode: Mode,
    ) -> Result<Lookup, CacheError> {
        let store = self.store.clone();
        let key = CacheKey::history(id, limit, offset);
        self.cache
            .get(&key, &[Tag::History(id)], mode, move || {
                loaders::history(store, id, limit, offset)
            })
            .await
    }

    /// Context or greeting: values that embed the lead's organization, so they carry its tag.
    /// The tag must be known before loading (fences are taken first), so the organization is
    /// taken from the cached lead on a miss; a hit never needs it. An unknown lead answers with
    /// the lead's own (negative) lookup.
    async fn org_dependent(
        &self,
        id: LeadId,
        key: CacheKey,
        mode: Mode,
        load: impl FnOnce(Store) -> LoadFuture + Send + 'static,
    ) -> Result<Lookup, CacheError> {
        if mode == Mode::ReadThrough {
            if let Some(hit) = self.cache.get_l1(&key).await {
                return Ok(hit);
            }
        }
        let lead = self.lead_by_id(id, Mode::ReadThrough).await?;
        let Some(org) = lead.entry.ids().org.filter(|_| !lead.entry.negative) else {
            return Ok(lead);
        };
        let store = self.store.clone();
        self.cache
            .get(&key, &[Tag::Org(org)], mode, move || load(store))
            .await
    }

    /// The call initiation for `caller` dialing `callee`: `None` when no organization has the
    /// callee's number. An unknown caller gets the organization's greeting for an unknown
    /// caller.
    pub async fn initiation(
        &self,
        caller: &PhoneNumber,
        callee: &PhoneNumber,
        channel: Channel,
        mode: Mode,
    ) -> Result<Option<Initiation>, CacheError> {
        let organization = self.org_by_phone(callee, mode).await?;
        let Some(org_id) = organization
            .entry
            .ids()
            .org
            .filter(|_| !organization.entry.negative)
        else {
            return Ok(None);
        };
        let lead = self.lead_by_phone(caller, org_id, mode).await?;
        let known = match lead.entry.ids().lead.filter(|_| !lead.entry.negative) {
            None => None,
            Some(lead_id) => {
                let (context, greeting) = tokio::join!(
                    self.context(lead_id, mode),
                    self.greeting(lead_id, channel, mode)
                );
                Some(KnownCaller {
                    context: context?,
                    greeting: greeting?,
                })
            }
        };
        // Unknown, or it vanished between the parts: greet as an unknown caller.
        let rendered_greeting = match &known {
            Some(k) if !k.greeting.entry.negative => None,
            _ => Some(loaders::unknown_caller_greeting(
                &organization.entry.body,
                channel,
            )?),
        };
        Ok(Some(Initiation {
            organization,
            lead,
            known,
            rendered_greeting,
        }))
    }
}
