//! Hostile: produces far more output than any sane limit allows.
//!
//! - `print`: writes to stdout without end;
//! - `log`: calls the `log` import without end, ignoring refusals;
//! - `stream`: writes 1 MiB response chunks without end, ignoring
//!   refusals (a thousand of them), then claims success;
//! - `dribble`: writes 1-byte response chunks without end, the same way;
//! - any other operation: returns a 16 MiB response.

use std::io::Write;

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, log, response};

struct HugeOutput;

const LINE: &str = "all work and no play makes a plugin a dull plugin\n";

impl Plugin for HugeOutput {
    fn handle(request: Request) -> Result<Response, PluginError> {
        match request.operation.as_str() {
            "print" => {
                let mut stdout = std::io::stdout();
                loop {
                    if let Err(err) = stdout.write_all(LINE.as_bytes()) {
                        return Err(PluginError::failed(format!("stdout refused: {err}")));
                    }
                }
            }
            "log" => {
                let mut refused = 0u64;
                loop {
                    if log::write(log::Level::Info, LINE).is_err() {
                        refused += 1;
                        if refused > 1_000 {
                            return Err(PluginError::failed("the host keeps refusing my logs"));
                        }
                    }
                }
            }
            "stream" => flood(&vec![b'x'; 1 << 20]),
            "dribble" => flood(b"x"),
            _ => Ok(Response::bytes(vec![b'x'; 16 << 20])),
        }
    }
}

/// Writes `chunk` as a response chunk over and over, past every refusal.
fn flood(chunk: &[u8]) -> Result<Response, PluginError> {
    let mut refused = 0u64;
    while refused <= 1_000 {
        if response::write(chunk).is_err() {
            refused += 1;
        }
    }
    Ok(Response::bytes("all of it, surely"))
}

export_plugin!(HugeOutput);
