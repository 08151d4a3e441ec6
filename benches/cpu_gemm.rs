//! GFLOP/s of single packed products at the ViT-B/32 layer shapes (qkv, out, fc1 with
//! QuickGELU, fc2 with the residual add) for 1/8/32 images of 50 tokens: the figure that
//! says how near the matrix kernel and its loops run to the machine's sgemm peak.
//! `cargo bench --bench cpu_gemm [-- --isa avx512]`; one line per product,
//! `GEMM <isa> <name> <m> <k> <n> <best GFLOP/s> <median GFLOP/s>`.

use fedclip::model::cpu::{Act, Epilogue, Isa, Kernels};
use std::time::{Duration, Instant};

/// (name, k, n, epilogue) of the four products of one ViT-B/32 encoder layer.
const PRODUCTS: [(&str, usize, usize, Epilogue); 4] = [
    ("qkv", 768, 2304, Epilogue::PLAIN),
    (
        "out",
        768,
        768,
        Epilogue {
            act: Act::None,
            residual: true,
        },
    ),
    (
        "fc1",
        768,
        3072,
        Epilogue {
            act: Act::QuickGelu,
            residual: false,
        },
    ),
    (
        "fc2",
        3072,
        768,
        Epilogue {
            act: Act::None,
            residual: true,
        },
    ),
];
const ROWS: [usize; 3] = [50, 400, 1600];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let isa = match args.iter().position(|a| a == "--isa") {
        Some(i) => Isa::parse_override(&args[i + 1]).expect("--isa"),
        None => Isa::from_env().expect("FEDCLIP_ISA"),
    };
    let kernels = Kernels::for_isa(isa).expect("ISA");
    println!("# {} threads", rayon::current_num_threads());
    for (name, k, n, ep) in PRODUCTS {
        let weight: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919) % 2001) as f32 / 1e4 - 0.1)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
        let w = kernels.pack(&weight, Some(&bias), (k, n), 1);
        for m in ROWS {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729) % 2003) as f32 / 1e3 - 1.0)
                .collect();
            let mut out = vec![0.0f32; m * n];
            let mut run = || kernels.linear(&w, &x, m, &mut out, ep);
            run();
            let mut times = Vec::new();
            let start = Instant::now();
            while times.len() < 5
                || (start.elapsed() < Duration::from_millis(1500) && times.len() < 200)
            {
                let t = Instant::now();
                run();
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let flops = 2.0 * (m * k * n) as f64 / 1e9;
            println!(
                "GEMM {} {name} {m} {k} {n} {:.1} {:.1}",
                isa.name(),
                flops / times[0],
                flops / times[times.len() / 2]
            );
        }
    }
}
