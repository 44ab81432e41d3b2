//! Data generation: a small demo set for `serve --demo`, and fast bulk inserts for `seed`
//! (rows generated inside Postgres with `generate_series`, in batches, with a progress bar).

use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::Settings;

async fn pool(settings: &Settings) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(settings.postgres.url.expose())
        .await
        .with_context(|| format!("cannot connect to postgres at {}", settings.postgres.url))
}

const DEMO_SQL: &str = r#"
WITH acme AS (
  INSERT INTO organizations (name, phone_number, timezone, settings)
  VALUES ('Acme Dental', '+15550100001', 'America/New_York', '{"greeting_templates": {"sms": "Hi {first_name}, Acme Dental here."}, "voice": {"elevenlabs": {"overrides": ["first_message", "language"], "language": "en", "dynamic_variable_defaults": {"plan": "none", "vip": false}}, "vapi": {"assistant_id": "asst-demo-acme"}, "retell": {"override_agent_id": "agent_demo_acme"}, "twilio": {"twiml": "<Response><Say>{greeting}</Say><Pause length=\"1\"/></Response>"}}}'::jsonb)
  RETURNING id
), bright AS (
  INSERT INTO organizations (name, phone_number, timezone, greeting_template)
  VALUES ('Bright Solar', '+15550100002', 'America/Los_Angeles', 'Hi {first_name}, this is {org_name}. Good {time_of_day}!')
  RETURNING id
), leads_in AS (
  INSERT INTO leads (organization_id, phone_number, first_name, last_name, email, status, attributes)
  SELECT acme.id, '+15550200001', 'Ada', 'Lovelace', 'ada@example.com', 'qualified', '{"plan": "premium", "preferred_time": "mornings"}'::jsonb FROM acme
  UNION ALL SELECT acme.id, '+15550200002', 'Grace', 'Hopper', 'grace@example.com', 'new', '{}'::jsonb FROM acme
  UNION ALL SELECT bright.id, '+15550200003', 'Alan', 'Turing', NULL, 'contacted', '{"roof": "south-facing"}'::jsonb FROM bright
  RETURNING id, organization_id, phone_number
)
INSERT INTO conversations (lead_id, organization_id, channel, direction, summary, started_at, ended_at)
SELECT l.id, l.organization_id, c.channel, c.direction, c.summary,
       now() - c.days * interval '1 day', now() - c.days * interval '1 day' + interval '6 minutes'
  FROM leads_in l
  JOIN (VALUES
    ('+15550200001', 'voice', 'inbound',  'Asked about whitening; booked a consultation for Tuesday.', 2),
    ('+15550200001', 'sms',   'outbound', 'Sent appointment reminder; confirmed.', 1),
    ('+15550200002', 'voice', 'inbound',  'New patient, wants a cleaning next month.', 5),
    ('+15550200003', 'voice', 'outbound', 'Interested in a 6 kW system; sending a quote.', 3)
  ) AS c(phone, channel, direction, summary, days) ON c.phone = l.phone_number
"#;

/// Seeds the demo data if the database has no organization yet, then prints example requests.
pub async fn demo(settings: &Settings) -> anyhow::Result<()> {
    let pool = pool(settings).await?;
    let empty: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM organizations)")
        .fetch_one(&pool)
        .await?;
    if empty {
        sqlx::query(DEMO_SQL)
            .execute(&pool)
            .await
            .context("seeding demo data")?;
        println!("seeded demo data: 2 organizations, 3 leads, 4 conversations");
    }
    let example: Option<(uuid::Uuid, String, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT l.id, l.phone_number, o.id, o.phone_number FROM leads l JOIN organizations o ON o.id = l.organization_id \
          ORDER BY (l.phone_number = '+15550200001') DESC, l.created_at LIMIT 1",
    )
    .fetch_optional(&pool)
    .await?;
    pool.close().await;
    let base = format!("http://{}", settings.server.listen);
    let enc = |p: &str| p.replace('+', "%2B");
    match example {
        Some((lead, lead_phone, org, org_phone)) => {
            println!("try:");
            println!(
                "  curl -si '{base}/v1/calls/initiation?caller={}&callee={}&channel=voice'",
                enc(&lead_phone),
                enc(&org_phone)
            );
            println!(
                "  curl -si '{base}/v1/leads/by-phone/{}?organization_id={org}'",
                enc(&lead_phone)
            );
            println!("  curl -si '{base}/v1/leads/{lead}/context'");
        }
        None => println!("the database has organizations but no leads; POST /v1/leads to add one"),
    }
    Ok(())
}

/// Inserts `orgs` organizations, `leads` leads spread over every organization, and
/// `conversations` conversations per new lead.
pub async fn bulk(
    settings: &Settings,
    orgs: u64,
    leads: u64,
    conversations: u64,
) -> anyhow::Result<()> {
    const BATCH: u64 = 5_000;
    let pool = pool(settings).await?;
    let started = Instant::now();
    let bar = ProgressBar::new(orgs + leads);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let org_base: i64 = sqlx::query_scalar("SELECT count(*) FROM organizations")
        .fetch_one(&pool)
        .await?;
    bar.set_message("organizations");
    let mut done = 0u64;
    while done < orgs {
        let n = BATCH.min(orgs - done);
        let from = org_base + done as i64 + 1;
        sqlx::query(
            "INSERT INTO organizations (name, phone_number, timezone) \
             SELECT 'Organization ' || i, '+1888' || lpad(i::text, 7, '0'), \
                    (ARRAY['America/New_York','America/Chicago','America/Denver','America/Los_Angeles','UTC'])[1 + i % 5] \
               FROM generate_series($1::bigint, $2::bigint) AS i \
             ON CONFLICT (phone_number) DO NOTHING",
        )
        .bind(from)
        .bind(from + n as i64 - 1)
        .execute(&pool)
        .await
        .context("inserting organizations")?;
        done += n;
        bar.inc(n);
    }

    let org_count: i64 = sqlx::query_scalar("SELECT count(*) FROM organizations")
        .fetch_one(&pool)
        .await?;
    if leads > 0 && org_count == 0 {
        anyhow::bail!("no organizations to attach leads to; pass --orgs N");
    }
    let lead_base: i64 = sqlx::query_scalar("SELECT count(*) FROM leads")
        .fetch_one(&pool)
        .await?;
    bar.set_message("leads and conversations");
    let mut done = 0u64;
    while done < leads {
        let n = BATCH.min(leads - done);
        let from = lead_base + done as i64 + 1;
        sqlx::query(
            "WITH o AS (SELECT array_agg(id ORDER BY phone_number) AS ids FROM organizations), \
             new_leads AS ( \
               INSERT INTO leads (organization_id, phone_number, first_name, last_name, email, status, attributes) \
               SELECT o.ids[1 + (i % cardinality(o.ids))], '+1' || (2000000000 + i)::text, \
                      (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken'])[1 + i % 8], \
                      'Lead' || i, 'lead' || i || '@example.com', \
                      (ARRAY['new','contacted','qualified','customer','lost'])[1 + i % 5], \
                      jsonb_build_object('seq', i, 'source', 'seed') \
                 FROM o, generate_series($1::bigint, $2::bigint) AS i \
               ON CONFLICT (organization_id, phone_number) DO NOTHING \
               RETURNING id, organization_id) \
             INSERT INTO conversations (lead_id, organization_id, channel, direction, summary, started_at, ended_at) \
             SELECT nl.id, nl.organization_id, \
                    (ARRAY['voice','sms','email','chat','whatsapp'])[1 + c % 5], \
                    CASE WHEN c % 2 = 0 THEN 'inbound' ELSE 'outbound' END, \
                    'Conversation ' || c || ': discussed next steps.', \
                    now() - c * interval '1 day', now() - c * interval '1 day' + interval '5 minutes' \
               FROM new_leads nl, generate_series(1, $3::bigint) AS c",
        )
        .bind(from)
        .bind(from + n as i64 - 1)
        .bind(conversations as i64)
        .execute(&pool)
        .await
        .context("inserting leads")?;
        done += n;
        bar.inc(n);
    }
    bar.finish_and_clear();
    sqlx::query("ANALYZE organizations, leads, conversations")
        .execute(&pool)
        .await?;
    pool.close().await;
    println!(
        "seeded {orgs} organizations, {leads} leads, {} conversations in {:.1}s",
        leads * conversations,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
