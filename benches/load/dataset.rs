//! The data set: 100 organizations, 100,000 leads and 500,000 conversations seeded into a fresh
//! database by `sidecache seed`, the leads in random order, and the wrk scripts that walk them
//! (one key, spread over every lead, and the mixed Zipf workload).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::SmallRng;
use rand::Rng;
use sqlx::PgPool;

use crate::open_loop::{get, Requests};
use crate::tools::bench_dir;
use crate::wrk::write_script;

pub(crate) struct Lead {
    pub(crate) id: String,
    pub(crate) phone: String,
    pub(crate) org: String,
    pub(crate) org_phone: String,
}

/// `/v1/calls/initiation` for `lead` calling its organization, on the voice channel.
pub(crate) fn initiation_path(lead: &Lead) -> String {
    format!(
        "/v1/calls/initiation?caller={}&callee={}&channel=voice",
        enc(&lead.phone),
        enc(&lead.org_phone)
    )
}

pub(crate) fn enc(phone: &str) -> String {
    phone.replace('+', "%2B")
}

/// The seeded database and what the scenarios drive against it.
pub(crate) struct Dataset {
    pub(crate) db: PgPool,
    /// Every lead, in random order; the first is the "one key" of the single-key scenarios.
    pub(crate) leads: Vec<Lead>,
    /// The lead-by-phone path of the first lead.
    pub(crate) one_path: String,
    /// One lead-by-phone path per line, for every lead.
    pub(crate) spread_file: PathBuf,
    /// wrk scripts: the URL as given, a random lead of `spread_file`, the mixed workload.
    pub(crate) plain: PathBuf,
    pub(crate) spread: PathBuf,
    pub(crate) mixed: PathBuf,
}

impl Dataset {
    /// The lead of the single-key scenarios.
    pub(crate) fn one(&self) -> &Lead {
        &self.leads[0]
    }
}

/// A wrk script that GETs a random line of `list` (one request path per line) each time.
pub(crate) fn paths_script(name: &str, list: &Path) -> PathBuf {
    write_script(
        name,
        &format!(
            r#"
local paths = {{}}
for line in io.lines("{}") do paths[#paths + 1] = line end
local n = #paths
local counter = 0
function setup(thread) counter = counter + 1; thread:set("seed", counter) end
function init(args) math.randomseed(os.time() + (seed or 0)) end
request = function() return wrk.format("GET", paths[math.random(n)]) end
"#,
            list.display()
        ),
    )
}

/// The open-loop twin of a `paths_script`: a GET of a random path from the list.
pub(crate) struct RandomPaths(pub(crate) Vec<Vec<u8>>);

impl RandomPaths {
    pub(crate) fn from_file(list: &Path) -> Self {
        RandomPaths(
            std::fs::read_to_string(list)
                .unwrap()
                .lines()
                .map(get)
                .collect(),
        )
    }
}

impl Requests for RandomPaths {
    fn next(&self, rng: &mut SmallRng, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0[rng.random_range(0..self.0.len())]);
    }
}

/// The open-loop twin of the mixed wrk script: the same Zipf (s = 1) over the leads in the same
/// order, the same kinds with the same weights, 2 % PATCH writes.
pub(crate) struct Mixed {
    leads: Vec<[String; 4]>,
    cdf: Vec<f64>,
    writes: AtomicU64,
}

impl Mixed {
    pub(crate) fn new(leads: &[Lead]) -> Self {
        let mut cdf = Vec::with_capacity(leads.len());
        let mut total = 0.0;
        for k in 1..=leads.len() {
            total += 1.0 / k as f64;
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Mixed {
            leads: leads
                .iter()
                .map(|l| {
                    [
                        l.id.clone(),
                        enc(&l.phone),
                        l.org.clone(),
                        enc(&l.org_phone),
                    ]
                })
                .collect(),
            cdf,
            writes: AtomicU64::new(0),
        }
    }
}

impl Requests for Mixed {
    fn next(&self, rng: &mut SmallRng, out: &mut Vec<u8>) {
        let u: f64 = rng.random();
        let i = self
            .cdf
            .partition_point(|&c| c < u)
            .min(self.leads.len() - 1);
        let [id, phone, org, org_phone] = &self.leads[i];
        let r = rng.random_range(1..=100u32);
        if r <= 2 {
            let n = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
            let body = format!(r#"{{"first_name": "W{n}"}}"#);
            let _ = write!(
                out,
                "PATCH /v1/leads/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        let path = match r {
            3..=27 => format!("/v1/leads/by-phone/{phone}?organization_id={org}"),
            28..=37 => format!("/v1/leads/{id}"),
            38..=47 => format!("/v1/organizations/by-phone/{org_phone}"),
            48..=52 => format!("/v1/organizations/{org}"),
            53..=72 => format!("/v1/leads/{id}/context"),
            73..=77 => format!("/v1/leads/{id}/summary"),
            78..=92 => {
                let channel = ["voice", "sms", "email", "chat", "whatsapp"][rng.random_range(0..5)];
                format!("/v1/leads/{id}/greeting?channel={channel}")
            }
            _ => format!(
                "/v1/leads/{id}/history?limit={}&offset=0",
                rng.random_range(1..=3) * 5
            ),
        };
        out.extend_from_slice(&get(&path));
    }
}

/// Seeds the database at `db_url` (which must not exist yet) and writes the key files and scripts.
pub(crate) async fn prepare(db_url: &str) -> Dataset {
    print!("seeding 100 organizations, 100,000 leads, 500,000 conversations... ");
    std::io::stdout().flush().ok();
    let seeded = Command::new(env!("CARGO_BIN_EXE_sidecache"))
        .args([
            "seed",
            "--orgs",
            "100",
            "--leads",
            "100000",
            "--conversations",
            "5",
        ])
        .env("DATABASE_URL", db_url)
        .env("SIDECACHE__LOG__LEVEL", "error")
        .current_dir(std::env::temp_dir())
        .stderr(Stdio::null())
        .output()
        .expect("seed runs");
    assert!(seeded.status.success(), "seeding failed");
    println!("{}", String::from_utf8_lossy(&seeded.stdout).trim());

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(db_url)
        .await
        .unwrap();
    // Steady state: autovacuum would otherwise set about the fresh 1.2 M rows mid-measurement.
    sqlx::query("VACUUM (ANALYZE) organizations, leads, conversations, sidecache_outbox")
        .execute(&db)
        .await
        .unwrap();
    let rows: Vec<(uuid::Uuid, String, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT l.id, l.phone_number, o.id, o.phone_number FROM leads l \
           JOIN organizations o ON o.id = l.organization_id ORDER BY random()",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let leads: Vec<Lead> = rows
        .into_iter()
        .map(|(id, phone, org, org_phone)| Lead {
            id: id.to_string(),
            phone,
            org: org.to_string(),
            org_phone,
        })
        .collect();
    let one = &leads[0];
    let one_path = format!(
        "/v1/leads/by-phone/{}?organization_id={}",
        enc(&one.phone),
        one.org
    );

    // Key files for the Lua scripts: one request path per line.
    let spread_file = bench_dir().join("spread.txt");
    std::fs::write(
        &spread_file,
        leads
            .iter()
            .map(|l| {
                format!(
                    "/v1/leads/by-phone/{}?organization_id={}\n",
                    enc(&l.phone),
                    l.org
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    let mixed_file = bench_dir().join("mixed.txt");
    std::fs::write(
        &mixed_file,
        leads
            .iter()
            .map(|l| {
                format!(
                    "{} {} {} {}\n",
                    l.id,
                    enc(&l.phone),
                    l.org,
                    enc(&l.org_phone)
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    let plain = write_script("plain", "");
    let spread = paths_script("spread", &spread_file);
    let mixed = write_script(
        "mixed",
        &format!(
            r#"
-- Zipf (s = 1) over the leads in file order; kinds weighted as a voice platform asks for them.
local leads = {{}}
for line in io.lines("{}") do
  local id, phone, org, org_phone = line:match("(%S+) (%S+) (%S+) (%S+)")
  leads[#leads + 1] = {{id = id, phone = phone, org = org, org_phone = org_phone}}
end
local n = #leads
local cdf, total = {{}}, 0
for k = 1, n do total = total + 1 / k; cdf[k] = total end
for k = 1, n do cdf[k] = cdf[k] / total end
local function zipf()
  local u, lo, hi = math.random(), 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return leads[lo]
end
local channels = {{"voice", "sms", "email", "chat", "whatsapp"}}
local counter = 0
function setup(thread) counter = counter + 1; thread:set("seed", counter) end
function init(args) math.randomseed(os.time() * 7 + (seed or 0)) end
local writes = 0
request = function()
  local l, r = zipf(), math.random(100)
  if r <= 2 then
    writes = writes + 1
    return wrk.format("PATCH", "/v1/leads/" .. l.id, {{["Content-Type"] = "application/json"}},
      '{{"first_name": "W' .. writes .. '"}}')
  elseif r <= 27 then return wrk.format("GET", "/v1/leads/by-phone/" .. l.phone .. "?organization_id=" .. l.org)
  elseif r <= 37 then return wrk.format("GET", "/v1/leads/" .. l.id)
  elseif r <= 47 then return wrk.format("GET", "/v1/organizations/by-phone/" .. l.org_phone)
  elseif r <= 52 then return wrk.format("GET", "/v1/organizations/" .. l.org)
  elseif r <= 72 then return wrk.format("GET", "/v1/leads/" .. l.id .. "/context")
  elseif r <= 77 then return wrk.format("GET", "/v1/leads/" .. l.id .. "/summary")
  elseif r <= 92 then return wrk.format("GET", "/v1/leads/" .. l.id .. "/greeting?channel=" .. channels[math.random(5)])
  else return wrk.format("GET", "/v1/leads/" .. l.id .. "/history?limit=" .. math.random(1, 3) * 5 .. "&offset=0")
  end
end
"#,
            mixed_file.display()
        ),
    );
    Dataset {
        db,
        leads,
        one_path,
        spread_file,
        plain,
        spread,
        mixed,
    }
}
