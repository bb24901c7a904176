//! Waiting for a schema this binary can write. `run` never gives up on a
//! database that is not migrated, or loses its tables or columns while it
//! writes (someone restoring or re-creating it): it reports itself not
//! ready, keeps every message unacknowledged, and checks the catalog again
//! until the schema is back. One-shot commands (`replay`) do not wait: the
//! write fails with [`StoreError::Schema`].

use std::sync::Arc;
use std::time::Duration;

use super::schema::Detected;
use super::{Store, StoreError};

/// Told why the schema cannot be written (`Some`), and when it can again
/// (`None`); `run` turns this into `/readyz`.
pub type SchemaReport = Arc<dyn Fn(Option<String>) + Send + Sync>;

/// How often a waiting store reads the catalog again.
pub const SCHEMA_RECHECK_INTERVAL: Duration = Duration::from_secs(2);

impl Store {
    /// Waits for a writable schema instead of failing (see the module docs).
    pub fn with_schema_wait(mut self, report: SchemaReport) -> Store {
        self.schema_wait = Some(report);
        self
    }

    /// Whether [`Store::with_schema_wait`] was asked for.
    pub fn waits_for_schema(&self) -> bool {
        self.schema_wait.is_some()
    }

    /// [`Store::detect`], and while the database cannot be written, wait:
    /// log once what to do, report it, and check again every
    /// [`SCHEMA_RECHECK_INTERVAL`]. Without a schema wait, or once a
    /// forced shutdown asks, the schema error is returned.
    pub async fn detect_waiting(&self) -> Result<Detected, StoreError> {
        let mut told = false;
        loop {
            let e = match self.detect().await {
                Ok(d) => {
                    if let Some(report) = &self.schema_wait {
                        report(None);
                    }
                    if told {
                        tracing::info!("{d} can be written now; resuming");
                    }
                    return Ok(d);
                }
                Err(StoreError::Schema(e)) => e,
                Err(e) => return Err(e),
            };
            let Some(report) = &self.schema_wait else {
                return Err(StoreError::Schema(e));
            };
            report(Some(e.to_string()));
            if !told {
                tracing::error!(
                    "cannot write to this database: {e}; waiting, not ready, nothing is \
                     acknowledged meanwhile; checking again every {}s",
                    SCHEMA_RECHECK_INTERVAL.as_secs()
                );
                told = true;
            }
            let forced = async {
                match &self.shutdown {
                    Some(rx) => {
                        let mut rx = rx.clone();
                        if rx.wait_for(|v| *v).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(SCHEMA_RECHECK_INTERVAL) => {}
                _ = forced => return Err(StoreError::Schema(e)),
            }
        }
    }
}
