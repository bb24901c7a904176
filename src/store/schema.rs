//! What the Lookout database is: its schema generation, read from the
//! catalog. The writer's columns and the converter's rules follow from it.
//!
//! The number in `database_version` is read (through `search_path`, where
//! upstream may have put it in another schema) but the catalog decides:
//! upstream bumps the number with a `setval` outside the migration's
//! transaction, so the number can lag the columns, and databases built by
//! upstream's experimental hot/cold chain report version 1 with 033's
//! columns. A database whose columns match no generation is refused, never
//! written to.

use tokio_postgres::GenericClient;

use crate::model::Generation;

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The generation the columns say the database is at.
    pub generation: Generation,
    /// The number in `database_version`; `None` without the sequence.
    pub version: Option<i64>,
    /// `job` is partitioned (upstream's experimental hot/cold split).
    pub hot_cold: bool,
}

impl Detected {
    /// Whether `database_version` disagrees with the columns.
    pub fn version_mismatch(&self) -> bool {
        self.version != Some(self.generation.number())
    }
}

impl std::fmt::Display for Detected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lookout schema generation {}", self.generation)?;
        if self.hot_cold {
            write!(f, " with the hot/cold split of job")?;
        }
        match self.version {
            Some(v) if v != self.generation.number() => {
                write!(f, " (database_version says {v}; the columns decide)")
            }
            Some(_) => Ok(()),
            None => write!(f, " (no database_version sequence)"),
        }
    }
}

/// Why a database cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("the Lookout tables are missing (no {0} table): run `lookout-ingester migrate` first")]
    MissingTable(&'static str),
    #[error("job_run has none of the failure columns of Lookout schema 031 or later (version {version:?}): run `lookout-ingester migrate` first")]
    TooOld { version: Option<i64> },
    #[error("job_run's columns match no Lookout schema generation this binary knows (031-035): failure_info {failure_info}, failure_category {failure_category}, scheduler_termination_reason {termination_reason}")]
    Unknown {
        failure_info: bool,
        failure_category: bool,
        termination_reason: bool,
    },
    #[error("cannot read the Lookout schema: {0}")]
    Query(String),
}

/// The catalog facts the generation is decided from; pure, so the decision
/// is unit-tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Catalog {
    pub has_job: bool,
    pub has_job_run: bool,
    pub failure_info: bool,
    pub failure_category: bool,
    pub termination_reason: bool,
    pub retry_tables: bool,
}

impl Catalog {
    /// The generation these columns belong to.
    pub fn generation(self, version: Option<i64>) -> Result<Generation, SchemaError> {
        if !self.has_job {
            return Err(SchemaError::MissingTable("job"));
        }
        if !self.has_job_run {
            return Err(SchemaError::MissingTable("job_run"));
        }
        let c = self;
        match (
            c.failure_info,
            c.failure_category,
            c.termination_reason,
            c.retry_tables,
        ) {
            (true, false, false, _) => Ok(Generation::G031),
            (true, true, false, _) => Ok(Generation::G032),
            (false, true, false, _) => Ok(Generation::G033),
            (false, true, true, false) => Ok(Generation::G034),
            (false, true, true, true) => Ok(Generation::G035),
            (false, false, false, _) => Err(SchemaError::TooOld { version }),
            _ => Err(SchemaError::Unknown {
                failure_info: c.failure_info,
                failure_category: c.failure_category,
                termination_reason: c.termination_reason,
            }),
        }
    }
}

const CATALOG: &str = "
    SELECT to_regclass('job') IS NOT NULL,
           to_regclass('job_run') IS NOT NULL,
           EXISTS (SELECT 1 FROM pg_partitioned_table
                    WHERE partrelid = to_regclass('job')),
           to_regclass('retry_policy') IS NOT NULL
             AND to_regclass('queue_retry_policy') IS NOT NULL,
           to_regclass('database_version') IS NOT NULL,
           ARRAY(SELECT attname::text FROM pg_attribute
                  WHERE attrelid = to_regclass('job_run')
                    AND attnum > 0 AND NOT attisdropped)";

/// Reads the catalog (on any connection or inside a transaction).
pub async fn detect(client: &impl GenericClient) -> Result<Detected, SchemaError> {
    let query = |e: tokio_postgres::Error| SchemaError::Query(crate::store::retry::describe(&e));
    let row = client.query_one(CATALOG, &[]).await.map_err(query)?;
    let get = |i: usize| -> Result<bool, SchemaError> {
        row.try_get(i)
            .map_err(|e| SchemaError::Query(e.to_string()))
    };
    let columns: Vec<String> = row
        .try_get(5)
        .map_err(|e| SchemaError::Query(e.to_string()))?;
    let has = |name: &str| columns.iter().any(|c| c == name);
    let catalog = Catalog {
        has_job: get(0)?,
        has_job_run: get(1)?,
        failure_info: has("failure_info"),
        failure_category: has("failure_category") && has("failure_subcategory"),
        termination_reason: has("scheduler_termination_reason"),
        retry_tables: get(3)?,
    };
    let hot_cold = get(2)?;
    let version = if get(4)? {
        let row = client
            .query_one("SELECT last_value FROM database_version", &[])
            .await
            .map_err(query)?;
        Some(
            row.try_get::<_, i64>(0)
                .map_err(|e| SchemaError::Query(e.to_string()))?,
        )
    } else {
        None
    };
    Ok(Detected {
        generation: catalog.generation(version)?,
        version,
        hot_cold,
    })
}

/// How many `job_run` rows hold a non-NULL `failure_info` (the data
/// migration 033 drops); `None` when the column does not exist. A full scan
/// of `job_run`: for `migrate`, not for the write path.
pub async fn failure_info_rows(client: &impl GenericClient) -> Result<Option<i64>, SchemaError> {
    let query = |e: tokio_postgres::Error| SchemaError::Query(crate::store::retry::describe(&e));
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute
                             WHERE attrelid = to_regclass('job_run')
                               AND attname = 'failure_info'
                               AND attnum > 0 AND NOT attisdropped)",
            &[],
        )
        .await
        .map_err(query)?
        .try_get(0)
        .map_err(|e| SchemaError::Query(e.to_string()))?;
    if !exists {
        return Ok(None);
    }
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM job_run WHERE failure_info IS NOT NULL",
            &[],
        )
        .await
        .map_err(query)?
        .try_get(0)
        .map_err(|e| SchemaError::Query(e.to_string()))?;
    Ok(Some(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(fi: bool, fc: bool, tr: bool, rt: bool) -> Catalog {
        Catalog {
            has_job: true,
            has_job_run: true,
            failure_info: fi,
            failure_category: fc,
            termination_reason: tr,
            retry_tables: rt,
        }
    }

    #[test]
    fn generation_follows_the_columns() {
        let cases = [
            (catalog(true, false, false, false), Ok(Generation::G031)),
            (catalog(true, true, false, false), Ok(Generation::G032)),
            (catalog(false, true, false, false), Ok(Generation::G033)),
            (catalog(false, true, true, false), Ok(Generation::G034)),
            (catalog(false, true, true, true), Ok(Generation::G035)),
            (
                catalog(false, false, false, false),
                Err(SchemaError::TooOld { version: Some(30) }),
            ),
        ];
        for (c, want) in cases {
            assert_eq!(c.generation(Some(30)), want, "{c:?}");
        }
        assert!(matches!(
            catalog(true, true, true, false).generation(None),
            Err(SchemaError::Unknown { .. })
        ));
        let no_job = Catalog::default();
        assert_eq!(
            no_job.generation(None),
            Err(SchemaError::MissingTable("job"))
        );
    }

    #[test]
    fn mismatch_is_reported() {
        let d = Detected {
            generation: Generation::G033,
            version: Some(1),
            hot_cold: true,
        };
        assert!(d.version_mismatch());
        assert_eq!(
            d.to_string(),
            "Lookout schema generation 033 with the hot/cold split of job (database_version says 1; the columns decide)"
        );
    }
}
