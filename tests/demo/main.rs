//! The root package's examples run as their own processes: the demo (its report, an early stop) and the application-pool example.

mod an_application_pool_gets_audit_metrics_and_shutdown;
mod demo_prints_its_report_when_stopped_early;
mod report_renders_in_a_browser;
