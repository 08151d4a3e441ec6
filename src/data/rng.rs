//! numpy's legacy random stream (`np.random.seed` / `np.random.RandomState`), bit for bit.
//!
//! The FedCLIP reference splits every domain with
//! `np.random.seed(seed); idx = np.arange(n); np.random.shuffle(idx)`, so reproducing its
//! splits means reproducing numpy's MT19937 and its legacy shuffle exactly:
//!
//! * [`Mt19937::new`]: `init_genrand`, what `np.random.seed(int)` does for seeds in
//!   `0..=2**32-1` (numpy's `mt19937_seed`).
//! * [`Mt19937::from_key`]: `init_by_array`, what `np.random.RandomState([a, b, ...])` does
//!   for an array seed (fedclip's own streams use it to derive independent, reproducible
//!   sequences from `(seed, tag, ...)`).
//! * [`RandomState::shuffle`]: `RandomState.shuffle` of a 1-d array: Fisher–Yates from the
//!   end, `j = random_interval(i)` for `i = n-1 … 1`, where `random_interval(max)` draws
//!   32-bit words (64-bit when `max > 2**32-1`), masks them with the smallest all-ones mask
//!   `>= max` and rejects values `> max`.
//! * [`RandomState::random_sample`]: numpy's 53-bit double, `(a >> 5, b >> 6)` of two words.
//! * [`RandomState::dirichlet`]: the legacy gamma sampler (Marsaglia–Tsang on the legacy
//!   polar-method normal, with its cached second value; Johnk-style rejection for shape < 1;
//!   `-ln(1-u)` exponentials for shape 1), normalised: what `RandomState.dirichlet` does.
//!
//! tests/data.rs checks all of these against tests/fixtures/splits/numpy_shuffle.json, made by
//! tests/reference/make_split_fixtures.py with numpy 2.4.6.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The 32-bit Mersenne Twister, seeded the way numpy seeds it.
#[derive(Clone)]
pub struct Mt19937 {
    key: [u32; N],
    pos: usize,
}

impl Mt19937 {
    /// `init_genrand(seed)` (numpy's `np.random.seed(seed)` for an integer seed).
    pub fn new(seed: u32) -> Self {
        let mut key = [0u32; N];
        let mut s = seed;
        for (i, k) in key.iter_mut().enumerate() {
            *k = s;
            s = 1_812_433_253u32
                .wrapping_mul(s ^ (s >> 30))
                .wrapping_add(i as u32 + 1);
        }
        Mt19937 { key, pos: N }
    }

    /// `init_by_array(init_key)` (numpy's `RandomState(array)` seeding). An empty key is
    /// treated as `[0]`; numpy refuses it.
    pub fn from_key(init_key: &[u32]) -> Self {
        let init_key: &[u32] = if init_key.is_empty() { &[0] } else { init_key };
        let mut mt = Self::new(19_650_218);
        let key = &mut mt.key;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(init_key.len()) {
            let prev = key[i - 1] ^ (key[i - 1] >> 30);
            key[i] = (key[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(init_key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                key[0] = key[N - 1];
                i = 1;
            }
            if j >= init_key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = key[i - 1] ^ (key[i - 1] >> 30);
            key[i] = (key[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                key[0] = key[N - 1];
                i = 1;
            }
        }
        key[0] = 0x8000_0000;
        mt.pos = N;
        mt
    }

    /// The 624-word state (numpy's `get_state()[1]`).
    pub fn state_key(&self) -> &[u32; N] {
        &self.key
    }

    fn generate(&mut self) {
        let key = &mut self.key;
        let twist = |a: u32, b: u32, c: u32| {
            let y = (a & UPPER_MASK) | (b & LOWER_MASK);
            c ^ (y >> 1) ^ (0u32.wrapping_sub(y & 1) & MATRIX_A)
        };
        for i in 0..N - M {
            key[i] = twist(key[i], key[i + 1], key[i + M]);
        }
        for i in N - M..N - 1 {
            key[i] = twist(key[i], key[i + 1], key[i + M - N]);
        }
        key[N - 1] = twist(key[N - 1], key[0], key[M - 1]);
        self.pos = 0;
    }

    /// The next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == N {
            self.generate();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Two outputs, high word first (numpy's `mt19937_next64`).
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        (hi << 32) | self.next_u32() as u64
    }

    /// A double in `[0, 1)` with 53 random bits (numpy's `mt19937_next_double`).
    pub fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }
}

/// numpy's legacy `RandomState`: the generator plus the cached second normal of the polar
/// method.
#[derive(Clone)]
pub struct RandomState {
    mt: Mt19937,
    gauss: Option<f64>,
}

impl RandomState {
    /// `np.random.RandomState(seed)` / `np.random.seed(seed)`.
    pub fn new(seed: u32) -> Self {
        RandomState {
            mt: Mt19937::new(seed),
            gauss: None,
        }
    }

    /// `np.random.RandomState([k0, k1, ...])`.
    pub fn from_key(key: &[u32]) -> Self {
        RandomState {
            mt: Mt19937::from_key(key),
            gauss: None,
        }
    }

    pub fn mt(&mut self) -> &mut Mt19937 {
        &mut self.mt
    }

    /// `random_sample()`.
    pub fn random_sample(&mut self) -> f64 {
        self.mt.next_f64()
    }

    /// numpy's `random_interval(max)`: uniform in `0..=max` by masked rejection.
    pub fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        if max <= u32::MAX as u64 {
            loop {
                let v = self.mt.next_u32() as u64 & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.mt.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }

    /// `RandomState.shuffle(x)` for a 1-d array.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.random_interval(i as u64) as usize;
            x.swap(i, j);
        }
    }

    /// `RandomState.permutation(n)`: `arange(n)` shuffled.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        self.shuffle(&mut idx);
        idx
    }

    /// numpy's `legacy_gauss`: the polar method, which yields two normals per accepted
    /// pair and returns the cached one on the next call.
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.mt.next_f64() - 1.0;
            let x2 = 2.0 * self.mt.next_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// numpy's `legacy_standard_exponential`.
    pub fn standard_exponential(&mut self) -> f64 {
        -(1.0 - self.mt.next_f64()).ln()
    }

    /// numpy's `legacy_standard_gamma(shape)`.
    pub fn standard_gamma(&mut self, shape: f64) -> f64 {
        if shape == 1.0 {
            return self.standard_exponential();
        }
        if shape == 0.0 {
            return 0.0;
        }
        if shape < 1.0 {
            loop {
                let u = self.mt.next_f64();
                let v = self.standard_exponential();
                if u <= 1.0 - shape {
                    let x = u.powf(1.0 / shape);
                    if x <= v {
                        return x;
                    }
                } else {
                    let y = -((1.0 - u) / shape).ln();
                    let x = (1.0 - shape + shape * y).powf(1.0 / shape);
                    if x <= v + y {
                        return x;
                    }
                }
            }
        }
        let b = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * b).sqrt();
        loop {
            let (mut x, mut v);
            loop {
                x = self.standard_normal();
                v = 1.0 + c * x;
                if v > 0.0 {
                    break;
                }
            }
            v = v * v * v;
            let u = self.mt.next_f64();
            if u < 1.0 - 0.0331 * (x * x) * (x * x) {
                return b * v;
            }
            if u.ln() < 0.5 * x * x + b * (1.0 - v + v.ln()) {
                return b * v;
            }
        }
    }

    /// `RandomState.dirichlet(alpha)` (one draw): independent gammas, each divided by their
    /// sum. All-zero gammas (possible for tiny `alpha`) give NaNs, as in numpy.
    pub fn dirichlet(&mut self, alpha: &[f64]) -> Vec<f64> {
        let mut out: Vec<f64> = alpha.iter().map(|&a| self.standard_gamma(a)).collect();
        let acc: f64 = out.iter().fold(0.0, |s, &v| s + v);
        let inv = 1.0 / acc;
        for v in &mut out {
            *v *= inv;
        }
        out
    }
}
