//! `coil devices`: what `--device` can take on this machine, and what `auto` picks.

use anyhow::Result;

pub fn devices() -> Result<()> {
    match coil::cuda_devices() {
        Ok(0) => println!("cuda      none: the driver reports no device"),
        Ok(count) => (0..count).for_each(|i| println!("cuda:{i}")),
        Err(reason) => println!("cuda      none: {reason}"),
    }
    let adapters = coil::adapters();
    if adapters.is_empty() {
        println!("wgpu      none: no adapter on this machine's graphics API");
    }
    for adapter in &adapters {
        println!("{adapter}");
    }
    let auto = coil::open_device(coil::Device::Auto)?;
    println!("auto      -> {}", auto.name());
    Ok(())
}
