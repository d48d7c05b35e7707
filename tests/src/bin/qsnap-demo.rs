//! `cargo xtask demo`: boots the built-in demo guest and shows what qsnap sees.

#![allow(clippy::print_stdout, reason = "the demo prints its transcript")]

use anyhow::Result;
use qsnap_tests::QemuVm;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<()> {
    let start = Instant::now();
    println!("== booting the demo guest (2 data disks, writer running) ==");
    let vm = QemuVm::builder().disks(2).writer(true).start().await?;
    println!("   VM directory: {}", vm.dir().display());
    let qmp = vm.qmp().await?;
    println!(
        "   QEMU {} ({})",
        qmp.greeting().version.qemu,
        qmp.greeting().version.package
    );

    println!("\n== query-status ==");
    let status = qmp.execute(&qmp::commands::QueryStatus).await?;
    println!("   {} (running: {})", status.status, status.running);

    println!("\n== disks (query-block) ==");
    for block in qmp.execute(&qmp::commands::QueryBlock).await? {
        let Some(inserted) = &block.inserted else {
            continue;
        };
        let node = inserted.node_name.as_deref().unwrap_or("?");
        let id = block.qdev_id().unwrap_or("?");
        println!(
            "   node {node}  device {id}  {} bytes",
            inserted.image.virtual_size
        );
        for (depth, image) in inserted.image.chain().enumerate() {
            println!(
                "   {:width$}└ {} ({})",
                "",
                image.filename,
                image.format,
                width = depth * 2
            );
        }
    }

    println!("\n== guest agent ==");
    vm.wait_for_agent(Duration::from_secs(60)).await?;
    let agent = qga::Client::connect(vm.qga_path(), qga::Config::default()).await?;
    let info = agent.execute(&qga::commands::GuestInfo).await?;
    let status = agent.execute(&qga::commands::GuestFsfreezeStatus).await?;
    println!(
        "   qemu-ga {}; fsfreeze supported: {}; filesystems: {status:?}",
        info.version,
        info.is_enabled("guest-fsfreeze-freeze")
    );
    println!(
        "\n== done in {:.1?}; shutting the guest down ==",
        start.elapsed()
    );
    Ok(())
}
