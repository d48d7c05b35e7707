//! The simulated monitor's commands: what each one checks and changes, with QEMU's
//! error texts. Arguments are read strictly ([`Args`]).

use super::agent::AgentShared;
use super::args::{Args, QmpErr, QmpResult, generic};
use super::graph::Graph;
use super::image::{FileLog, ImageMeta};
use super::jobs::{Events, JobOpts, Jobs, Work};
use super::qmp_graph::{block_commit, blockdev_add, blockdev_del};
use super::server::ClientSlot;
use super::transaction::{single, transaction};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything the simulated QEMU holds.
#[derive(Debug)]
pub(super) struct MonState {
    pub(super) graph: Graph,
    pub(super) jobs: Jobs,
    pub(super) files: FileLog,
    pub(super) client: Option<ClientSlot>,
    pub(super) log: Vec<String>,
    pub(super) running: bool,
    /// What `query-name` answers (`-name`); `None`: no name.
    pub(super) name: Option<String>,
    /// The agent of the same VM: `stop`/`cont` pause and resume it.
    pub(super) agent: Option<Arc<AgentShared>>,
}

impl MonState {
    /// Sends events to the connected client; with none connected they are lost.
    pub(super) fn emit(&self, events: Events) {
        let Some(client) = &self.client else { return };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        for (name, data) in events {
            let mut e = json!({"event": name, "timestamp": {"seconds": now.as_secs(), "microseconds": now.subsec_micros()}});
            if let (false, Some(obj)) = (data.is_null(), e.as_object_mut()) {
                obj.insert("data".into(), data);
            }
            let _ = client.out.send(line(&e));
        }
    }
}

/// A QMP line: JSON and `\r\n`.
pub(super) fn line(v: &Value) -> Vec<u8> {
    let mut out = super::server::qemu_json(v);
    out.extend_from_slice(b"\r\n");
    out
}

/// Executes one command (after capabilities negotiation).
pub(super) fn dispatch(
    st: &mut MonState,
    name: &str,
    args: Option<Value>,
    ev: &mut Events,
) -> QmpResult {
    let mut a = Args::new(args, "")?;
    let empty = |a: Args| a.finish().map(|()| json!({}));
    match name {
        "query-version" => empty(a).map(|_| version()),
        "query-status" => {
            a.finish()?;
            let status = if st.running { "running" } else { "paused" };
            Ok(json!({"running": st.running, "status": status}))
        }
        "stop" | "cont" => run_state(st, name == "cont", ev).and_then(|()| empty(a)),
        "quit" => empty(a),
        "query-block" => empty(a).map(|_| st.graph.query_block()),
        "query-named-block-nodes" => {
            let flat = a.opt_bool("flat")?.unwrap_or(false);
            a.finish()?;
            Ok(st.graph.named_nodes(flat))
        }
        "query-jobs" => {
            a.finish()?;
            Ok(Value::Array(
                st.jobs.infos().into_iter().map(job_json).collect(),
            ))
        }
        "blockdev-create" => blockdev_create(st, a, ev),
        "blockdev-add" => blockdev_add(&mut st.graph, a),
        "blockdev-del" => blockdev_del(st, a),
        "transaction" => transaction(st, a, ev),
        "block-commit" => block_commit(st, a, ev),
        "job-complete" | "job-cancel" | "job-dismiss" | "job-finalize" => {
            let id = a.str("id")?;
            a.finish()?;
            match name {
                "job-complete" => st.jobs.complete(&id),
                "job-cancel" => st.jobs.cancel(&id),
                "job-finalize" => st.jobs.finalize(&id, &mut st.graph, ev),
                _ => st.jobs.dismiss(&id, ev),
            }
            .map(|()| json!({}))
        }
        "query-name" => {
            a.finish()?;
            Ok(st.name.as_ref().map_or(json!({}), |n| json!({"name": n})))
        }
        "query-uuid" => empty(a).map(|_| json!({"UUID": "00000000-0000-0000-0000-000000000000"})),
        // Device `vblk{i}` sits at 00:{3+i}.0, where the agent's guest-get-fsinfo puts
        // the disk under mountpoint i.
        "query-pci" => empty(a).map(|_| {
            let devices: Vec<Value> = st
                .graph
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    json!({"bus": 0, "slot": 3 + i, "function": 0, "qdev_id": d.id,
                        "class_info": {"class": 256, "desc": "SCSI controller"},
                        "id": {"vendor": 6900, "device": 4097}, "regions": []})
                })
                .collect();
            json!([{"bus": 0, "devices": devices}])
        }),
        _ => match single(st, name, a, ev) {
            Some(result) => result,
            None => Err(QmpErr {
                class: "CommandNotFound".into(),
                desc: format!("The command {name} has not been found"),
            }),
        },
    }
}

/// The version the simulator reports (the greeting's too).
pub(super) fn version() -> Value {
    json!({"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "sim"})
}

fn job_json(j: super::jobs::SimJob) -> Value {
    let mut v = json!({"id": j.id, "type": j.kind, "status": j.status,
        "current-progress": j.current_progress, "total-progress": j.total_progress});
    if let (Some(e), Some(obj)) = (j.error, v.as_object_mut()) {
        obj.insert("error".into(), json!(e));
    }
    v
}

fn run_state(st: &mut MonState, run: bool, ev: &mut Events) -> QmpResult<()> {
    if st.running != run {
        st.running = run;
        ev.push((if run { "RESUME" } else { "STOP" }, Value::Null));
    }
    if let Some(agent) = &st.agent {
        agent.paused.send_replace(!run);
    }
    Ok(())
}

fn blockdev_create(st: &mut MonState, mut a: Args, ev: &mut Events) -> QmpResult {
    let id = a.str("job-id")?;
    let mut o = a.obj("options")?;
    a.finish()?;
    let work = match o.str("driver")?.as_str() {
        "file" => {
            let work = Work::CreateFile {
                filename: o.str("filename")?,
                size: o.u64("size")?,
            };
            o.ignore(&["preallocation", "nocow", "extent-size-hint"]);
            work
        }
        "qcow2" => {
            let file = o.str("file")?;
            let meta = ImageMeta {
                virtual_size: o.u64("size")?,
                cluster_size: o.opt_u64("cluster-size")?.unwrap_or(65536),
                backing_file: o.opt_str("backing-file")?,
                backing_fmt: o.opt_str("backing-fmt")?,
            };
            o.ignore(&[
                "version",
                "preallocation",
                "lazy-refcounts",
                "refcount-bits",
                "compression-type",
                "extended-l2",
            ]);
            Work::CreateQcow2 { file, meta }
        }
        other => {
            return Err(generic(format!(
                "sim: blockdev-create of driver '{other}' is not modelled"
            )));
        }
    };
    o.finish()?;
    let opts = JobOpts {
        auto_dismiss: false,
        auto_finalize: true,
        group: None,
    };
    st.jobs.start(id, work, 1, Vec::new(), opts, ev)?;
    Ok(json!({}))
}
