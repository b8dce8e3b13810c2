//! Names and keys drawn for distractor-dense haystacks (templates whose filler holds `{name}` or
//! `{key}`): deterministic in the sweep's seed and the block's index, so every prompt of a sweep
//! reads the same filler and forking at the needles still works.
//!
//! A name is three syllables of [`SYLLABLES`] (`Faroga`): 48^3 = 110,592 names. Filler block `i`
//! gets name `perm(i mod FILLER_NAMES)` of a seeded permutation, and the needle of depth index `d`
//! gets `perm(NAMES - 1 - d)`, a name no filler block uses: the asked name is bound once in the
//! whole prompt (names of the filler repeat only after 100,592 blocks, over a million tokens).
//! `checkpoints/training/train_bindings.py` draws its training names from the same syllables.

use super::sweep::MAX_DEPTHS;

/// The syllables of a name: 12 consonants x 4 vowels.
pub const SYLLABLES: [&str; 48] = [
    "ba", "be", "bi", "bo", "da", "de", "di", "do", "fa", "fe", "fi", "fo", "ga", "ge", "gi", "go", "ka", "ke", "ki", "ko", "la", "le",
    "li", "lo", "ma", "me", "mi", "mo", "na", "ne", "ni", "no", "pa", "pe", "pi", "po", "ra", "re", "ri", "ro", "sa", "se", "si", "so",
    "ta", "te", "ti", "to",
];

/// How many names there are.
pub const NAMES: u64 = 48 * 48 * 48;

/// Names the filler cycles through; the rest are the needles'.
const FILLER_NAMES: u64 = NAMES - MAX_DEPTHS as u64;

/// The name of filler block `block`.
pub fn filler_name(seed: u64, block: usize) -> String {
    name(permute(seed, block as u64 % FILLER_NAMES))
}

/// The name the needle of depth index `depth_index` binds (and the question asks for).
pub fn needle_name(seed: u64, depth_index: usize) -> String {
    name(permute(seed, NAMES - 1 - depth_index as u64 % MAX_DEPTHS as u64))
}

/// The key of filler block `block`: `digits` decimal digits.
pub fn filler_key(seed: u64, block: usize, digits: u32) -> String {
    digits_of(splitmix(seed ^ 0x6b65_7973 ^ (block as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)), digits)
}

/// `value mod 10^digits`, zero-padded to `digits`.
pub(crate) fn digits_of(value: u64, digits: u32) -> String {
    format!("{:0width$}", value % 10u64.pow(digits), width = digits as usize)
}

/// Name number `index` (< [`NAMES`]): three syllables, the first capitalised.
fn name(index: u64) -> String {
    let s = SYLLABLES.len() as u64;
    let (a, b, c) = ((index / (s * s)) as usize, (index / s % s) as usize, (index % s) as usize);
    let mut name = format!("{}{}{}", SYLLABLES[a], SYLLABLES[b], SYLLABLES[c]);
    name[..1].make_ascii_uppercase();
    name
}

/// A seeded permutation of `0..NAMES`: three rounds of an odd multiply-add and an xorshift,
/// each a bijection of `0..2^17`, cycle-walked back into `0..NAMES`.
fn permute(seed: u64, index: u64) -> u64 {
    const BITS: u32 = 17;
    const MASK: u64 = (1 << BITS) - 1;
    debug_assert!(NAMES <= MASK + 1 && index < NAMES);
    let mut x = index;
    loop {
        for round in 0..3u64 {
            let k = splitmix(seed.wrapping_add(round));
            x = (x.wrapping_mul(k | 1).wrapping_add(k >> 32)) & MASK;
            x ^= x >> 7;
        }
        if x < NAMES {
            return x;
        }
    }
}

/// SplitMix64's finaliser.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permutation_is_a_bijection_and_needles_never_meet_the_filler() {
        for seed in [0, 7, u64::MAX] {
            let mut seen = vec![false; NAMES as usize];
            for i in 0..NAMES {
                let p = permute(seed, i) as usize;
                assert!(!seen[p], "seed {seed}: {i} repeats a name");
                seen[p] = true;
            }
            let filler: std::collections::HashSet<String> = (0..FILLER_NAMES as usize).map(|b| filler_name(seed, b)).collect();
            assert_eq!(filler.len(), FILLER_NAMES as usize);
            for d in [0, 1, MAX_DEPTHS - 1] {
                assert!(!filler.contains(&needle_name(seed, d)), "seed {seed}: needle {d}");
            }
        }
    }

    #[test]
    fn names_are_three_syllables_and_keys_have_their_digits() {
        let n = filler_name(3, 12);
        assert_eq!(n.len(), 6);
        assert!(n.starts_with(|c: char| c.is_ascii_uppercase()));
        assert!(SYLLABLES.contains(&&n[2..4].to_string()[..]));
        assert_ne!(filler_name(3, 12), filler_name(4, 12), "the seed matters");
        for digits in [1, 2, 5] {
            let k = filler_key(3, 12, digits);
            assert_eq!(k.len(), digits as usize);
            assert!(k.chars().all(|c| c.is_ascii_digit()));
        }
        assert_eq!(digits_of(7, 3), "007");
    }
}
