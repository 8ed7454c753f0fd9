//! The end every writer shares: the model file is written as `OUT.partial`, flushed to disk,
//! dropped from the page cache, renamed to `OUT` and read back, so a failed or interrupted run
//! never leaves a truncated file under the requested name and a finished one is known to load.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use torchless_format::int4::Int4Method;
use torchless_format::{evict_from_page_cache, ModelFile, ModelWriter, TensorSpec, TokenizerData};

use super::error::ConvertError;

/// `OUT.partial`, removed unless committed.
struct PartialFile {
    target: PathBuf,
    partial: PathBuf,
    committed: bool,
}

impl PartialFile {
    fn new(target: &Path) -> Self {
        let mut name = target.as_os_str().to_owned();
        name.push(".partial");
        Self {
            target: target.to_path_buf(),
            partial: PathBuf::from(name),
            committed: false,
        }
    }

    fn commit(mut self) -> Result<(), ConvertError> {
        std::fs::rename(&self.partial, &self.target).map_err(|e| {
            ConvertError::io(
                &self.target,
                format!(
                    "cannot rename {} to {}",
                    self.partial.display(),
                    self.target.display()
                ),
                e,
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// A model file being written through [`ModelWriter`].
pub(crate) struct ModelOutput {
    partial: PartialFile,
    writer: ModelWriter<BufWriter<File>>,
}

impl ModelOutput {
    /// Creates `OUT.partial` and writes the header.
    pub(crate) fn create(
        path: &Path,
        metadata: &[(String, String)],
        specs: Vec<TensorSpec>,
        tokenizer: &TokenizerData,
        int4_method: Int4Method,
    ) -> Result<Self, ConvertError> {
        let partial = PartialFile::new(path);
        let file = File::create(&partial.partial)
            .map_err(|e| ConvertError::io(path, format!("cannot create {}", path.display()), e))?;
        // Errors name the requested file, not the temporary one.
        let writer = ModelWriter::new(
            BufWriter::with_capacity(1 << 20, file),
            path.display().to_string(),
            metadata,
            specs,
            Some(tokenizer),
        )?
        .with_int4_method(int4_method);
        Ok(Self { partial, writer })
    }

    /// The writer, to stream the tensors through.
    pub(crate) fn writer(&mut self) -> &mut ModelWriter<BufWriter<File>> {
        &mut self.writer
    }

    /// Checks every tensor was written, flushes the file to disk, renames it to its name and
    /// reads it back.
    pub(crate) fn finish(self) -> Result<ModelFile, ConvertError> {
        let path = self.partial.target.clone();
        let out = self.writer.finish()?;
        let file = out.into_inner().map_err(|e| {
            ConvertError::io(
                &path,
                format!("cannot write {}", path.display()),
                e.into_error(),
            )
        })?;
        file.sync_all().map_err(|e| {
            ConvertError::io(&path, format!("cannot flush {} to disk", path.display()), e)
        })?;
        // The first load then reads it back in large page-cache folios (faster to map).
        let _ = evict_from_page_cache(&file);
        drop(file);
        self.partial.commit()?;
        read_back(&path)
    }
}

/// Opens a model file just written and checks it is complete.
fn read_back(path: &Path) -> Result<ModelFile, ConvertError> {
    let read_back = |message: &str, source| ConvertError::ReadBack {
        path: path.to_path_buf(),
        message: format!("{} was written but {message}", path.display()),
        source: Box::new(source),
    };
    let model = ModelFile::open(path).map_err(|e| read_back("does not read back", e))?;
    model
        .validate_mistral()
        .map_err(|e| read_back("is incomplete", e))?;
    Ok(model)
}
