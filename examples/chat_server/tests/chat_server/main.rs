//! The chat_server example against real clients: an HTTP client (awc) and a
//! WebSocket client (tokio-tungstenite), the server run in-process on a free
//! port (`client.rs`). One test binary; `status_shows_recent_incidents` has
//! its own, as it installs the process's tracing subscriber.

mod client;

mod admits_sessions_within_its_caps;
mod cannot_be_filled_by_anyone;
mod closes_sockets_whose_session_or_client_is_gone;
mod holds_kv_as_shared_blocks;
mod page_works_in_chromium;
mod reaps_clients_that_stop_reading;
mod refuses_bad_input;
mod serves_real_clients;
mod shuts_down_on_sigterm;
