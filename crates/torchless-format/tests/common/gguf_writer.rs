//! A minimal GGUF writer for tests that need files gguf-py would not write: a fixture read with
//! the crate's reader, changed (a key removed, a type swapped, a tensor dropped or resized) and
//! written back. Also included by the model crate's tests (`#[path]`).
#![allow(dead_code)]

use torchless_format::gguf::{GgufArray, GgufFile, GgufValue};

/// One tensor to write: name, dims as GGUF stores them (fastest first), ggml type id, bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

/// A GGUF file as plain data.
#[derive(Debug, Clone)]
pub struct RawGguf {
    pub version: u32,
    pub alignment: usize,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<RawTensor>,
}

impl RawGguf {
    /// Everything `file` holds.
    pub fn read(file: &GgufFile) -> Self {
        RawGguf {
            version: file.version(),
            alignment: file.alignment() as usize,
            metadata: file.metadata().to_vec(),
            tensors: file
                .tensors()
                .iter()
                .map(|t| RawTensor {
                    name: t.name().to_string(),
                    dims: t.dims().to_vec(),
                    type_id: t.ggml_type().id(),
                    data: file.tensor_bytes(t.name()).unwrap().to_vec(),
                })
                .collect(),
        }
    }

    pub fn open(path: &std::path::Path) -> Self {
        Self::read(&GgufFile::open(path).unwrap())
    }

    /// Sets (or adds) metadata `key`.
    pub fn set(&mut self, key: &str, value: GgufValue) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Removes metadata `key`.
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut RawTensor {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    pub fn remove_tensor(&mut self, name: &str) {
        self.tensors.retain(|t| t.name != name);
    }

    /// The file's bytes: header, metadata, tensor infos, padding, data (each tensor aligned).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.layout().0
    }

    /// Offsets where the file's structures start and end: the counts, each metadata entry and
    /// tensor info, the data section, each tensor's data (start, middle, end).
    pub fn boundaries(&self) -> Vec<usize> {
        self.layout().1
    }

    fn layout(&self) -> (Vec<u8>, Vec<usize>) {
        let mut marks = vec![0, 4, 8, 16, 24];
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            marks.push(out.len());
            write_string(&mut out, key);
            marks.push(out.len());
            write_value(&mut out, value);
        }
        let align = self.alignment as u64;
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            marks.push(out.len());
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).next_multiple_of(align);
        }
        marks.push(out.len());
        let start = (out.len() as u64).next_multiple_of(align);
        out.resize(start as usize, 0);
        for (t, o) in self.tensors.iter().zip(offsets) {
            out.resize((start + o) as usize, 0);
            marks.push(out.len());
            marks.push(out.len() + t.data.len() / 2);
            out.extend_from_slice(&t.data);
            marks.push(out.len());
        }
        marks.sort_unstable();
        marks.dedup();
        (out, marks)
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(value: &GgufValue) -> u32 {
    match value {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn array_type_id(array: &GgufArray) -> u32 {
    match array {
        GgufArray::U8(_) => 0,
        GgufArray::I8(_) => 1,
        GgufArray::U16(_) => 2,
        GgufArray::I16(_) => 3,
        GgufArray::U32(_) => 4,
        GgufArray::I32(_) => 5,
        GgufArray::F32(_) => 6,
        GgufArray::Bool(_) => 7,
        GgufArray::String(_) => 8,
        GgufArray::Array(_) => 9,
        GgufArray::U64(_) => 10,
        GgufArray::I64(_) => 11,
        GgufArray::F64(_) => 12,
    }
}

fn write_value(out: &mut Vec<u8>, value: &GgufValue) {
    out.extend_from_slice(&type_id(value).to_le_bytes());
    write_payload(out, value);
}

fn write_payload(out: &mut Vec<u8>, value: &GgufValue) {
    match value {
        GgufValue::U8(v) => out.push(*v),
        GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(u8::from(*v)),
        GgufValue::String(s) => write_string(out, s),
        GgufValue::Array(a) => write_array(out, a),
    }
}

fn write_array(out: &mut Vec<u8>, array: &GgufArray) {
    out.extend_from_slice(&array_type_id(array).to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match array {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => each!(v),
        GgufArray::U16(v) => each!(v),
        GgufArray::I16(v) => each!(v),
        GgufArray::U32(v) => each!(v),
        GgufArray::I32(v) => each!(v),
        GgufArray::U64(v) => each!(v),
        GgufArray::I64(v) => each!(v),
        GgufArray::F32(v) => each!(v),
        GgufArray::F64(v) => each!(v),
        GgufArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        GgufArray::String(v) => {
            for s in v {
                write_string(out, s);
            }
        }
        GgufArray::Array(v) => {
            for a in v {
                write_array(out, a);
            }
        }
    }
}
