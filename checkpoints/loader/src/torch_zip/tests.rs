//! The reader against the real fixture and against hand-built hostile archives. Small writers
//! for pickles and ZIPs build exactly the bytes each case needs.

use std::path::Path;

use super::{read_tensors, Error};
use crate::{DType, LoadError, TensorStore};

/// Pickle bytes, opcode by opcode (protocol 2, as torch.save writes).
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Pickle {
        Pickle(vec![0x80, 2])
    }

    fn op(mut self, bytes: &[u8]) -> Pickle {
        self.0.extend_from_slice(bytes);
        self
    }

    fn str(self, s: &str) -> Pickle {
        let mut op = vec![b'X'];
        op.extend_from_slice(&(s.len() as u32).to_le_bytes());
        op.extend_from_slice(s.as_bytes());
        self.op(&op)
    }

    fn int(self, value: i64) -> Pickle {
        let mut op = vec![0x8a, 8];
        op.extend_from_slice(&value.to_le_bytes());
        self.op(&op)
    }

    fn global(self, module: &str, name: &str) -> Pickle {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }

    fn ints(mut self, values: &[i64]) -> Pickle {
        self = self.op(b"(");
        for &v in values {
            self = self.int(v);
        }
        self.op(b"t")
    }

    /// `_rebuild_tensor_v2(storage(key, class, numel), offset, shape, stride, False, OrderedDict())`.
    fn tensor(self, key: &str, class: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Pickle {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b"tQ")
            .int(offset)
            .ints(shape)
            .ints(stride)
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R")
    }

    fn bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A pickle of `{name: tensor}` for each contiguous f32 tensor given as (name, key, shape).
fn state_dict(tensors: &[(&str, &str, &[i64])]) -> Vec<u8> {
    let mut p = Pickle::new().op(b"}(");
    for &(name, key, shape) in tensors {
        let numel: i64 = shape.iter().product();
        let mut stride = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        p = p.str(name).tensor(key, "FloatStorage", numel, 0, shape, &stride);
    }
    p.op(b"u.").bytes()
}

/// A stored ZIP of `entries`, with the ZIP64 end records (as torch writes) when `zip64`, and
/// ZIP64 extra fields in place of the 32-bit sizes and offsets when `force_extra`.
fn zip(entries: &[(&str, &[u8])], zip64: bool, force_extra: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for &(name, data) in entries {
        let offset = out.len() as u64;
        let extra: Vec<u8> = if force_extra {
            let mut e = vec![1, 0, 24, 0];
            e.extend_from_slice(&(data.len() as u64).to_le_bytes());
            e.extend_from_slice(&(data.len() as u64).to_le_bytes());
            e.extend_from_slice(&offset.to_le_bytes());
            e
        } else {
            Vec::new()
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method, time, date, crc
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);

        let (size32, offset32) = if force_extra { (u32::MAX, u32::MAX) } else { (data.len() as u32, offset as u32) };
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // versions, flags, method, time, date, crc
        central.extend_from_slice(&size32.to_le_bytes());
        central.extend_from_slice(&size32.to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 10]); // comment length, disk, attributes
        central.extend_from_slice(&offset32.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        central.extend_from_slice(&extra);
    }
    let directory_offset = out.len() as u64;
    out.extend_from_slice(&central);
    let count = entries.len() as u64;
    if zip64 {
        let record = out.len() as u64;
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&(central.len() as u64).to_le_bytes());
        out.extend_from_slice(&directory_offset.to_le_bytes());
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&record.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    let (count16, size32, offset32) =
        if zip64 { (u16::MAX, u32::MAX, u32::MAX) } else { (count as u16, central.len() as u32, directory_offset as u32) };
    out.extend_from_slice(&count16.to_le_bytes());
    out.extend_from_slice(&count16.to_le_bytes());
    out.extend_from_slice(&size32.to_le_bytes());
    out.extend_from_slice(&offset32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A torch.save-shaped archive: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
fn torch_file(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let names: Vec<String> = storages.iter().map(|(k, _)| format!("archive/data/{k}")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("archive/data.pkl", pickle), ("archive/byteorder", b"little")];
    entries.extend(names.iter().map(String::as_str).zip(storages.iter().map(|s| s.1)));
    zip(&entries, true, false)
}

fn store(file: Vec<u8>) -> Result<TensorStore, LoadError> {
    TensorStore::from_bytes("pytorch_model.bin", file)
}

fn error_of(file: &[u8]) -> Error {
    match read_tensors(file) {
        Ok(tensors) => panic!("expected an error, read {} tensors", tensors.len()),
        Err(e) => e,
    }
}

fn simple() -> Vec<u8> {
    let values = floats(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    torch_file(&state_dict(&[("w", "0", &[2, 3]), ("b", "1", &[2])]), &[("0", &values), ("1", &floats(&[7.0, 8.0]))])
}

#[test]
fn reads_the_mamba_ssm_fixture_like_its_safetensors_twin() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mamba_ssm_dialect");
    let bin = TensorStore::from_files(vec![(dir.join("pytorch_model.bin"), crate::tensors::Bytes::map_file(&dir.join("pytorch_model.bin")).unwrap())]).unwrap();
    let safetensors = TensorStore::from_bytes("model.safetensors", std::fs::read(dir.join("model.safetensors")).unwrap()).unwrap();
    for name in safetensors.names() {
        let (shape, dtype) = safetensors.describe(name).unwrap();
        assert_eq!(bin.describe(name).unwrap(), (shape.clone(), dtype), "{name}");
        assert_eq!(bin.read_f32(name, &shape).unwrap(), safetensors.read_f32(name, &shape).unwrap(), "{name}");
    }
    // The tied head is a second name of the embedding's storage.
    let (shape, _) = bin.describe("lm_head.weight").unwrap();
    assert_eq!(bin.read_f32("lm_head.weight", &shape).unwrap(), bin.read_f32("backbone.embedding.weight", &shape).unwrap());
    assert_eq!(bin.names().len(), safetensors.names().len() + 1);
}

#[test]
fn reads_f32_f16_bf16_views_with_offsets() {
    let halves: Vec<u8> = [0.5f32, -2.0, 3.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let bf16s: Vec<u8> = [1.5f32, 4.0].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let pickle = Pickle::new()
        .op(b"}(")
        .str("tail")
        .tensor("0", "FloatStorage", 6, 2, &[2, 2], &[2, 1])
        .str("half")
        .tensor("1", "HalfStorage", 3, 0, &[3], &[1])
        .str("bf16")
        .tensor("2", "BFloat16Storage", 2, 0, &[1, 2], &[7, 1])
        .op(b"u.")
        .bytes();
    let file = torch_file(&pickle, &[("0", &floats(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])), ("1", &halves), ("2", &bf16s)]);
    let store = store(file).unwrap();
    assert_eq!(store.read_f32("tail", &[2, 2]).unwrap(), [2.0, 3.0, 4.0, 5.0]);
    assert_eq!(store.describe("half").unwrap(), (vec![3], DType::F16));
    assert_eq!(store.read_f32("half", &[3]).unwrap(), [0.5, -2.0, 3.0]);
    assert_eq!(store.read_f32("bf16", &[1, 2]).unwrap(), [1.5, 4.0]);
}

#[test]
fn zip64_extra_fields_and_plain_directories_both_work() {
    let pickle = state_dict(&[("w", "0", &[2])]);
    let data = floats(&[1.0, 2.0]);
    for (zip64, extra) in [(false, false), (true, false), (true, true), (false, true)] {
        let file = zip(&[("archive/data.pkl", &pickle), ("archive/data/0", &data)], zip64, extra);
        assert_eq!(store(file).unwrap().read_f32("w", &[2]).unwrap(), [1.0, 2.0], "zip64 {zip64}, extra {extra}");
    }
}

#[test]
fn an_ordered_dict_with_metadata_as_module_state_dict_writes_it() {
    let pickle = Pickle::new()
        .global("collections", "OrderedDict")
        .op(b"q\x00)R(")
        .str("w")
        .tensor("0", "FloatStorage", 1, 0, &[1], &[1])
        .op(b"u}")
        .str("_metadata")
        .op(b"h\x00)R(")
        .str("")
        .op(b"}")
        .str("version")
        .op(b"K\x01su")
        .op(b"sb.")
        .bytes();
    let store = store(torch_file(&pickle, &[("0", &floats(&[9.0]))])).unwrap();
    assert_eq!(store.names(), ["w"]);
}

#[test]
fn a_repeated_key_keeps_the_last_value() {
    let pickle = Pickle::new()
        .op(b"}(")
        .str("w")
        .tensor("0", "FloatStorage", 2, 0, &[1], &[1])
        .str("w")
        .tensor("0", "FloatStorage", 2, 1, &[1], &[1])
        .op(b"u.")
        .bytes();
    let store = store(torch_file(&pickle, &[("0", &floats(&[1.0, 2.0]))])).unwrap();
    assert_eq!(store.read_f32("w", &[1]).unwrap(), [2.0]);
}

#[test]
fn code_execution_globals_are_refused_by_name() {
    // The classic: os.system("echo pwned") through REDUCE. Refused at the GLOBAL, before any call.
    let pickle = Pickle::new().global("os", "system").op(b"(").str("echo pwned").op(b"tR.").bytes();
    let error = error_of(&torch_file(&pickle, &[]));
    assert!(matches!(&error, Error::Global { module, name, .. } if module == "os" && name == "system"), "{error}");
    assert!(error.to_string().contains("`os.system` is refused"), "{error}");

    // The same through STACK_GLOBAL (protocol 4), and a non-tensor class a real checkpoint may name.
    let pickle = Pickle::new().str("builtins").str("eval").op(&[0x93]).op(b".").bytes();
    assert!(error_of(&torch_file(&pickle, &[])).to_string().contains("`builtins.eval`"));
    let pickle = Pickle::new().global("numpy.core.multiarray", "_reconstruct").op(b".").bytes();
    assert!(error_of(&torch_file(&pickle, &[])).to_string().contains("`numpy.core.multiarray._reconstruct`"));
    // Calling an allowed marker that is not a function is refused too.
    let pickle = Pickle::new().global("torch", "FloatStorage").op(b")R.").bytes();
    assert!(error_of(&torch_file(&pickle, &[])).to_string().contains("FloatStorage called directly"));
}

#[test]
fn object_building_opcodes_are_refused_by_name() {
    for (bytes, name) in [(&b"i"[..], "INST"), (b"o", "OBJ"), (b"\x81", "NEWOBJ"), (b"\x82\x01", "EXT1"), (b"P", "PERSID"), (b"\xff", "unknown")] {
        let pickle = Pickle::new().op(b"N").op(bytes).op(b".").bytes();
        let error = error_of(&torch_file(&pickle, &[]));
        assert!(matches!(&error, Error::Opcode { name: n, .. } if *n == name), "{error}");
    }
}

#[test]
fn views_past_their_storage_or_overflowing_are_refused() {
    let data = floats(&[1.0, 2.0, 3.0, 4.0]);
    let case = |offset: i64, shape: &[i64], stride: &[i64]| {
        let pickle = Pickle::new().op(b"}(").str("w").tensor("0", "FloatStorage", 4, offset, shape, stride).op(b"u.").bytes();
        error_of(&torch_file(&pickle, &[("0", &data)])).to_string()
    };
    assert!(case(1000, &[1], &[1]).contains("past the end of storage `0`"));
    assert!(case(1, &[4], &[1]).contains("past the end"));
    assert!(case(0, &[2, 2], &[3, 1]).contains("past the end"));
    assert!(case(0, &[1 << 40, 1 << 40], &[1 << 40, 1]).contains("more elements than memory can address"));
    assert!(case(0, &[2, 2], &[i64::MAX, 1]).contains("past the end"));
    assert!(case(5, &[0], &[1]).contains("past the end"));
    assert!(case(-1, &[1], &[1]).contains("negative"));
    assert!(case(0, &[2], &[1, 1]).contains("1 sizes but 2 strides"));
    assert!(case(0, &[1; 65], &[1; 65]).contains("65 dimensions (at most 64"));
}

#[test]
fn storages_must_match_their_entries() {
    let data = floats(&[1.0, 2.0]);
    let lying = Pickle::new().op(b"}(").str("w").tensor("0", "FloatStorage", 1 << 50, 0, &[1], &[1]).op(b"u.").bytes();
    let error = error_of(&torch_file(&lying, &[("0", &data)])).to_string();
    assert!(error.contains("declares 1125899906842624 float32 elements") && error.contains("holds 8 bytes"), "{error}");
    let missing = Pickle::new().op(b"}(").str("w").tensor("9", "FloatStorage", 2, 0, &[1], &[1]).op(b"u.").bytes();
    assert!(error_of(&torch_file(&missing, &[("0", &data)])).to_string().contains("no entry `archive/data/9`"));
    let twice = Pickle::new()
        .op(b"}(")
        .str("a")
        .tensor("0", "FloatStorage", 2, 0, &[1], &[1])
        .str("b")
        .tensor("0", "HalfStorage", 4, 0, &[1], &[1])
        .op(b"u.")
        .bytes();
    assert!(error_of(&torch_file(&twice, &[("0", &data)])).to_string().contains("declared twice"));
}

#[test]
fn other_dtypes_and_strided_views_are_refused_when_read() {
    let pickle = Pickle::new()
        .op(b"}(")
        .str("ids")
        .tensor("0", "LongStorage", 1, 0, &[1], &[1])
        .str("t")
        .tensor("1", "FloatStorage", 4, 0, &[2, 2], &[1, 2])
        .op(b"u.")
        .bytes();
    let store = store(torch_file(&pickle, &[("0", &7i64.to_le_bytes()), ("1", &floats(&[1.0, 2.0, 3.0, 4.0]))])).unwrap();
    let error = store.describe("ids").unwrap_err().to_string();
    assert!(error.contains("`ids` has dtype int64"), "{error}");
    let error = store.read_f32("t", &[2, 2]).unwrap_err().to_string();
    assert!(error.contains("`t` is not contiguous") && error.contains("stride [1, 2]"), "{error}");
}

#[test]
fn zip_headers_that_lie_are_refused_without_allocating() {
    let good = simple();
    assert!(store(good.clone()).is_ok());
    // The central directory's size of `archive/data/0` (the third entry) claims 4 GB - 1.
    let mut lying = good.clone();
    let directory = good.windows(4).position(|w| w == [0x50, 0x4b, 0x01, 0x02]).unwrap();
    let mut at = directory;
    for _ in 0..2 {
        let name_len = u16::from_le_bytes([good[at + 28], good[at + 29]]) as usize;
        at += 46 + name_len;
    }
    lying[at + 20..at + 28].copy_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff]);
    let error = error_of(&lying).to_string();
    assert!(error.contains("entry `archive/data/0` claims 4294967294 bytes"), "{error}");

    // Compressed and uncompressed sizes that disagree for a stored entry.
    let mut mismatched = good.clone();
    mismatched[at + 20] ^= 1;
    assert!(error_of(&mismatched).to_string().contains("claims"));

    // A compressed (deflate) entry.
    let mut compressed = good.clone();
    compressed[at + 10] = 8;
    let local = u32::from_le_bytes(good[at + 42..at + 46].try_into().unwrap()) as usize;
    compressed[local + 8] = 8;
    assert!(error_of(&compressed).to_string().contains("compressed (method 8)"));
}

#[test]
fn not_torch_archives() {
    assert!(error_of(b"").to_string().contains("too short"));
    assert!(error_of(&[0x80, 2, 0x8a, 10]).to_string().contains("legacy"));
    let plain = zip(&[("hello.txt", b"hi")], false, false);
    assert!(error_of(&plain).to_string().contains("not one written by torch.save"));
    let pickle = state_dict(&[]);
    let big_endian = zip(&[("archive/data.pkl", &pickle), ("archive/byteorder", b"big")], false, false);
    assert!(error_of(&big_endian).to_string().contains("byte order `big`"));
    let two = zip(&[("a/data.pkl", &pickle), ("b/data.pkl", &pickle)], false, false);
    assert!(error_of(&two).to_string().contains("ambiguous"));
    let duplicate = zip(&[("archive/data.pkl", &pickle), ("archive/data.pkl", &pickle)], false, false);
    assert!(error_of(&duplicate).to_string().contains("appears twice"));
}

#[test]
fn top_level_and_values_must_be_a_dict_of_tensors() {
    let list = Pickle::new().op(b"]q\x00h\x00a.").bytes(); // a list that contains itself
    assert!(error_of(&torch_file(&list, &[])).to_string().contains("holds a list"));
    let self_dict = Pickle::new().op(b"}q\x00").str("me").op(b"h\x00s.").bytes(); // d["me"] = d
    assert!(error_of(&torch_file(&self_dict, &[])).to_string().contains("entry `me` is a dict, not a tensor"));
    let int_key = Pickle::new().op(b"}K\x01Ns.").bytes();
    assert!(error_of(&torch_file(&int_key, &[])).to_string().contains("key is a int"));
}

#[test]
fn deep_nesting_neither_recurses_nor_overflows() {
    let mut pickle = Pickle::new().op(b")");
    for _ in 0..1_000_000 {
        pickle = pickle.op(&[0x85]);
    }
    assert!(error_of(&torch_file(&pickle.op(b".").bytes(), &[])).to_string().contains("holds a tuple"));
    let mut marks = Pickle::new();
    for _ in 0..100_000 {
        marks = marks.op(b"(]");
    }
    assert!(error_of(&torch_file(&marks.op(b".").bytes(), &[])).to_string().contains("holds a list"));
}

#[test]
fn malformed_pickles_are_errors_not_panics() {
    for (bytes, needle) in [
        (&b"h\x05."[..], "memo entry 5 read before it was written"),
        (b"(0.", "stack underflow"),
        (b"N(s.", "stack underflow"),
        (b"t.", "no MARK"),
        (b"N", "without a STOP"),
        (b"X\xff\xff\xff\xff", "only 0 are left"),
        (b"\x8a\x09", "wider than 64 bits"),
        (b"K", "inside an opcode's argument"),
        (b"NNa.", "APPEND to a None"),
        (b"(NNNd.", "odd number"),
        (b"Nb.", "stack underflow"),
        (b"NNb.", "BUILD on a None"),
        (b"cos\nsys", "not terminated"),
        (b"\x80\x09", "protocol 9"),
        (b"NQ.", "persistent id must be a tuple"),
    ] {
        let mut pickle = vec![0x80, 2];
        pickle.extend_from_slice(bytes);
        let error = error_of(&torch_file(&pickle, &[])).to_string();
        assert!(error.contains(needle), "{:?}: {error}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn every_truncation_and_byte_flip_of_a_small_file_is_an_error_or_a_valid_read() {
    let good = simple();
    for len in 0..good.len() {
        assert!(read_tensors(&good[..len]).is_err(), "truncated to {len} bytes");
    }
    for at in 0..good.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= flip;
            if let Ok(store) = store(bad) {
                for name in store.names() {
                    if let Ok((shape, _)) = store.describe(name) {
                        let _ = store.read_f32(name, &shape);
                    }
                }
            }
        }
    }
}

#[test]
fn names_from_the_file_are_printed_safely() {
    let name = format!("\u{1b}[31mred{}", "x".repeat(5000));
    let pickle = Pickle::new().op(b"}(").str(&name).op(b"Nu.").bytes();
    let error = store(torch_file(&pickle, &[])).err().expect("an error").to_string();
    assert!(error.contains("\\u{1b}[31mred") && !error.contains('\u{1b}'), "{error}");
    assert!(error.len() < 2200 && error.ends_with("..."), "{} bytes", error.len());
}
