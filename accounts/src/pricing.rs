//! Pricing: what a run costs, in integer micros, computed once when it finishes.
//!
//! Prices are per unit of a resource held for an hour (`vCPU-hour`, `GB-hour`), plus a price per
//! million requests. A run's exact cost is the rational number
//!
//! ```text
//! duration_ms × ( cpu_millicores/1000 × cpu_price + memory_mb/1024 × mem_price
//!                 + disk_mb/1024 × disk_price ) / 3_600_000  +  request_price / 1_000_000
//! ```
//!
//! evaluated exactly in `u128` and **rounded up to the next whole micro, once per run** (so no
//! run that used resources is free, and a bill is the exact sum of its runs' rounded costs).
//!
//! The **worst case** of an invocation is the same formula with its whole `timeout_ms`: what is
//! reserved when it is accepted ([`crate::hold`]). A run is never billed more than was reserved
//! for it ([`bill`]): a run that overran its timeout by a few milliseconds, or whose prices rose
//! while it ran, costs its reservation.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bson::doc;
use schemas::{FunctionDoc, Hold, Mode, PriceDoc, PricedResource, Resources};

/// The four prices, in micros per unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    /// Micros per vCPU-hour (1,000 millicores for an hour).
    pub cpu_per_vcpu_hour: i64,
    /// Micros per GB-hour (1,024 MB for an hour).
    pub memory_per_gb_hour: i64,
    /// Micros per GB-hour of scratch disk.
    pub disk_per_gb_hour: i64,
    /// Micros per million requests.
    pub request_per_million: i64,
}

impl Default for Prices {
    /// Close to AWS Lambda's public x86 prices: $0.0000166667 per GB-second is $0.06 per GB-hour
    /// for a bundle in which 1,769 MB comes with one vCPU; split here into 0.05 per vCPU-hour and
    /// 0.03 per GB-hour. Ephemeral storage $0.000111 per GB-hour; $0.20 per million requests.
    fn default() -> Self {
        Prices {
            cpu_per_vcpu_hour: 50_000,
            memory_per_gb_hour: 30_000,
            disk_per_gb_hour: 111,
            request_per_million: 200_000,
        }
    }
}

const MS_PER_HOUR: u128 = 3_600_000;
/// Common denominator: millicores per vCPU × MB per GB × ms per hour × requests per million.
const DENOM: u128 = 1000 * 1024 * MS_PER_HOUR * 1_000_000;

impl Prices {
    /// The exact cost of one run, rounded up to a whole micro.
    pub fn run_cost(&self, duration_ms: u64, r: Resources) -> i64 {
        let d = duration_ms as u128;
        let p = |x: i64| x.max(0) as u128;
        let cpu = d * r.cpu_millicores as u128 * p(self.cpu_per_vcpu_hour) * 1024 * 1_000_000;
        let mem = d * r.memory_mb as u128 * p(self.memory_per_gb_hour) * 1000 * 1_000_000;
        let disk = d * r.disk_mb as u128 * p(self.disk_per_gb_hour) * 1000 * 1_000_000;
        let req = p(self.request_per_million) * 1000 * 1024 * MS_PER_HOUR;
        let total = cpu + mem + disk + req;
        let micros = total.div_ceil(DENOM);
        i64::try_from(micros).unwrap_or(i64::MAX)
    }

    /// The most an invocation can cost: its whole timeout at its resources, plus the request.
    pub fn worst_case(&self, timeout_ms: u64, r: Resources) -> i64 {
        self.run_cost(timeout_ms, r)
    }

    /// What accepting an invocation of `func` reserves: the worst case of every attempt it
    /// may take (an async run has up to `1 + retries`; a sync call never retries).
    pub fn invocation_worst_case(&self, func: &FunctionDoc, mode: Mode) -> i64 {
        let one = self.worst_case(func.timeout_ms, func.resources);
        match mode {
            Mode::Sync => one,
            Mode::Async => one.saturating_mul(1 + i64::from(func.retries)),
        }
    }

    /// The price documents, as stored and as served by `GET /api/v1/pricing`.
    pub fn to_docs(&self) -> Vec<PriceDoc> {
        vec![
            PriceDoc {
                resource: PricedResource::Cpu,
                unit: "vCPU-hour".into(),
                price_micros_per_unit: self.cpu_per_vcpu_hour,
            },
            PriceDoc {
                resource: PricedResource::Memory,
                unit: "GB-hour".into(),
                price_micros_per_unit: self.memory_per_gb_hour,
            },
            PriceDoc {
                resource: PricedResource::Disk,
                unit: "GB-hour".into(),
                price_micros_per_unit: self.disk_per_gb_hour,
            },
            PriceDoc {
                resource: PricedResource::Request,
                unit: "1M requests".into(),
                price_micros_per_unit: self.request_per_million,
            },
        ]
    }

    /// Prices from stored documents; a resource without a document keeps its default.
    pub fn from_docs(docs: &[PriceDoc]) -> Prices {
        let mut p = Prices::default();
        for d in docs {
            match d.resource {
                PricedResource::Cpu => p.cpu_per_vcpu_hour = d.price_micros_per_unit,
                PricedResource::Memory => p.memory_per_gb_hour = d.price_micros_per_unit,
                PricedResource::Disk => p.disk_per_gb_hour = d.price_micros_per_unit,
                PricedResource::Request => p.request_per_million = d.price_micros_per_unit,
            }
        }
        p
    }

    /// Reads the prices from MongoDB, seeding the defaults first when none are stored.
    pub async fn load_or_seed(db: &mongodb::Database) -> anyhow::Result<Prices> {
        use anyhow::Context as _;
        use futures::TryStreamExt;
        let coll = db.collection::<PriceDoc>(schemas::names::collections::PRICING);
        for d in Prices::default().to_docs() {
            // Only what is missing is written; existing prices are never overwritten. Two
            // services seeding at once may race to insert the same `_id`: the second try
            // then finds it.
            let seed = || {
                coll.update_one(
                    doc! {"_id": d.resource.as_str()},
                    doc! {"$setOnInsert": {"unit": &d.unit, "price_micros_per_unit": d.price_micros_per_unit}},
                )
                .upsert(true)
            };
            if seed().await.is_err() {
                seed().await.context("seeding default prices")?;
            }
        }
        let docs: Vec<PriceDoc> = coll.find(doc! {}).await?.try_collect().await?;
        Ok(Prices::from_docs(&docs))
    }
}

/// What a finished run is billed: its cost, never more than what was reserved for it.
pub fn bill(prices: &Prices, duration_ms: u64, r: Resources, hold: Option<&Hold>) -> i64 {
    let cost = prices.run_cost(duration_ms, r);
    match hold {
        Some(h) => cost.min(h.reserved_micros.max(0)),
        None => cost,
    }
}

/// The prices a service prices invocations with: read from MongoDB at most every [`Self::TTL`]
/// (one reader at a time), the last ones read kept while MongoDB does not answer.
#[derive(Debug, Default)]
pub struct PriceBook {
    cached: Mutex<Option<(Prices, Instant)>>,
    loading: tokio::sync::Mutex<()>,
}

impl PriceBook {
    /// How long prices read are used before they are read again.
    pub const TTL: Duration = Duration::from_secs(30);
    /// Time limit of one read.
    const READ_TIMEOUT: Duration = Duration::from_secs(3);

    pub fn new() -> PriceBook {
        PriceBook::default()
    }

    fn fresh(&self) -> Option<(Prices, bool)> {
        let c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        c.map(|(p, at)| (p, at.elapsed() < Self::TTL))
    }

    /// The current prices; an error only when none could ever be read.
    pub async fn current(&self, db: &mongodb::Database) -> anyhow::Result<Prices> {
        if let Some((p, true)) = self.fresh() {
            return Ok(p);
        }
        let _one = self.loading.lock().await;
        if let Some((p, true)) = self.fresh() {
            return Ok(p);
        }
        match tokio::time::timeout(Self::READ_TIMEOUT, Prices::load_or_seed(db)).await {
            Ok(Ok(p)) => {
                *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((p, Instant::now()));
                Ok(p)
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => "no answer in time".to_owned(),
                };
                match self.fresh() {
                    Some((p, _)) => {
                        tracing::warn!(error = %why, "reading prices failed; using the last ones read");
                        Ok(p)
                    }
                    None => Err(anyhow::anyhow!("reading prices failed: {why}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gb_hour_costs_the_memory_price() {
        let p = Prices {
            cpu_per_vcpu_hour: 0,
            memory_per_gb_hour: 30_000,
            disk_per_gb_hour: 0,
            request_per_million: 0,
        };
        assert_eq!(p.run_cost(3_600_000, Resources::new(0, 1024, 0)), 30_000);
        assert_eq!(p.run_cost(0, Resources::new(0, 1024, 0)), 0);
    }

    #[test]
    fn rounding_is_up_once_per_run() {
        let p = Prices::default();
        // A 1 ms run of a small function costs a fraction of a micro: billed as 1.
        assert_eq!(p.run_cost(1, Resources::new(500, 128, 64)), 1);
        // One vCPU + 1 GB + 1 GB disk for an hour, plus one request (0.2 micro).
        let c = p.run_cost(3_600_000, Resources::new(1000, 1024, 1024));
        assert_eq!(c, 50_000 + 30_000 + 111 + 1);
    }

    #[test]
    fn no_overflow_at_extremes() {
        let p = Prices::default();
        let c = p.run_cost(
            u32::MAX as u64,
            Resources::new(1_000_000, 1_000_000, 1_000_000),
        );
        assert!(c > 0);
    }

    #[test]
    fn docs_round_trip() {
        let p = Prices::default();
        assert_eq!(Prices::from_docs(&p.to_docs()), p);
    }

    #[test]
    fn a_run_is_never_billed_more_than_its_reservation() {
        let p = Prices::default();
        let r = Resources::new(1000, 1024, 1024);
        let worst = p.worst_case(1000, r);
        let hold = Hold {
            reserved_micros: worst,
            sync: false,
        };
        // Within its timeout: the real cost.
        assert_eq!(bill(&p, 400, r, Some(&hold)), p.run_cost(400, r));
        assert!(bill(&p, 400, r, Some(&hold)) < worst);
        // Past it (a kill that took a few ms), or at higher prices: the reservation.
        assert!(p.run_cost(1_500, r) > worst);
        assert_eq!(bill(&p, 1_500, r, Some(&hold)), worst);
        let dearer = Prices {
            cpu_per_vcpu_hour: p.cpu_per_vcpu_hour * 10,
            ..p
        };
        assert_eq!(bill(&dearer, 1000, r, Some(&hold)), worst);
        // Runs without a reservation (accepted before reservations existed) pay their cost.
        assert_eq!(bill(&p, 1_500, r, None), p.run_cost(1_500, r));
    }
}
