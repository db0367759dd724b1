//! The Arrow IPC side of batch embedding: reads a request's texts from an IPC stream (any number
//! of record batches, LZ4-compressed or not) and writes the answer, one record batch with a row
//! per input row: `embedding` List<Float32> and `error` Utf8, each null where the other is set.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::builder::{Float32Builder, ListBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, DataType, Field, Schema};

/// The text column's name when a request names none.
pub const DEFAULT_TEXT_COLUMN: &str = "text";

/// Why a request's Arrow payload was refused (INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("arrow_ipc is not an Arrow IPC stream: {0}")]
    NotArrow(ArrowError),
    #[error("the Arrow stream has no column `{0}` (columns: {1})")]
    NoColumn(String, String),
    #[error("column `{0}` is {1}; it must be Utf8 or LargeUtf8")]
    NotText(String, DataType),
    #[error("{0} rows is more than batch_embed.max_rows = {1}")]
    TooManyRows(usize, usize),
}

/// A request's record batches, kept so its texts can be borrowed.
pub struct Texts {
    batches: Vec<RecordBatch>,
    column: usize,
    large: bool,
}

impl Texts {
    /// Reads the IPC stream in `bytes` and finds the text `column` (Utf8 or LargeUtf8), refusing
    /// more than `max_rows` rows.
    pub fn read(bytes: &[u8], column: &str, max_rows: usize) -> Result<Texts, InputError> {
        let reader =
            StreamReader::try_new(Cursor::new(bytes), None).map_err(InputError::NotArrow)?;
        let schema = reader.schema();
        let Some((index, field)) = schema.column_with_name(column) else {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(InputError::NoColumn(column.to_string(), names.join(", ")));
        };
        let large = match field.data_type() {
            DataType::Utf8 => false,
            DataType::LargeUtf8 => true,
            other => return Err(InputError::NotText(column.to_string(), other.clone())),
        };
        let mut batches = Vec::new();
        let mut rows = 0usize;
        for batch in reader {
            let batch = batch.map_err(InputError::NotArrow)?;
            rows += batch.num_rows();
            if rows > max_rows {
                return Err(InputError::TooManyRows(rows, max_rows));
            }
            batches.push(batch);
        }
        Ok(Texts {
            batches,
            column: index,
            large,
        })
    }

    /// The texts in row order (`None` for a null).
    pub fn collect(&self) -> Vec<Option<&str>> {
        let mut out = Vec::with_capacity(self.batches.iter().map(|b| b.num_rows()).sum());
        for b in &self.batches {
            let col = b.column(self.column);
            if self.large {
                out.extend(col.as_string::<i64>().iter());
            } else {
                out.extend(col.as_string::<i32>().iter());
            }
        }
        out
    }
}

/// One row of the answer.
pub type RowResult = Result<Vec<f32>, String>;

/// The answer's schema.
fn schema() -> Arc<Schema> {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    Arc::new(Schema::new(vec![
        Field::new("embedding", DataType::List(item), true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// Writes `rows` as an IPC stream of one record batch.
pub fn write(rows: &[RowResult]) -> Result<Vec<u8>, ArrowError> {
    let values: usize = rows.iter().map(|r| r.as_ref().map_or(0, Vec::len)).sum();
    let mut embedding =
        ListBuilder::with_capacity(Float32Builder::with_capacity(values), rows.len());
    let mut error = StringBuilder::new();
    for row in rows {
        match row {
            Ok(v) => {
                embedding.values().append_slice(v);
                embedding.append(true);
                error.append_null();
            }
            Err(e) => {
                embedding.append_null();
                error.append_value(e);
            }
        }
    }
    let schema = schema();
    let embedding = embedding.finish();
    let error = error.finish();
    debug_assert_eq!(embedding.len(), error.len());
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(embedding), Arc::new(error)])?;
    let mut out = Vec::with_capacity(values * 4 + rows.len() * 16 + 512);
    let mut writer = StreamWriter::try_new(&mut out, &schema)?;
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, StringArray};
    use arrow_ipc::writer::IpcWriteOptions;
    use arrow_ipc::CompressionType;

    fn stream(batch: &RecordBatch, lz4: bool) -> Vec<u8> {
        let mut options = IpcWriteOptions::default();
        if lz4 {
            options = options
                .try_with_compression(Some(CompressionType::LZ4_FRAME))
                .expect("lz4");
        }
        let mut out = Vec::new();
        let mut w =
            StreamWriter::try_new_with_options(&mut out, &batch.schema(), options).expect("writer");
        w.write(batch).expect("write");
        w.finish().expect("finish");
        drop(w);
        out
    }

    fn texts(values: Vec<Option<&str>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let ids = Int32Array::from_iter_values(0..values.len() as i32);
        RecordBatch::try_new(
            schema,
            vec![Arc::new(ids), Arc::new(StringArray::from(values))],
        )
        .expect("batch")
    }

    #[test]
    fn reads_plain_and_lz4_streams() {
        let batch = texts(vec![Some("a"), None, Some("c")]);
        for lz4 in [false, true] {
            let t = Texts::read(&stream(&batch, lz4), "text", 10).expect("reads");
            assert_eq!(t.collect(), vec![Some("a"), None, Some("c")]);
        }
    }

    #[test]
    fn refuses_bad_input_with_reasons() {
        let batch = texts(vec![Some("a"), Some("b")]);
        let bytes = stream(&batch, false);
        assert!(matches!(
            Texts::read(b"not arrow", "text", 10),
            Err(InputError::NotArrow(_))
        ));
        let e = Texts::read(&bytes, "body", 10).err().expect("no column");
        assert!(e.to_string().contains("id, text"), "{e}");
        assert!(matches!(
            Texts::read(&bytes, "id", 10),
            Err(InputError::NotText(..))
        ));
        assert!(matches!(
            Texts::read(&bytes, "text", 1),
            Err(InputError::TooManyRows(2, 1))
        ));
    }

    #[test]
    fn answer_has_a_row_per_input_in_order() {
        let rows = vec![Ok(vec![1.0, 2.0]), Err("boom".to_string()), Ok(vec![3.0])];
        let bytes = write(&rows).expect("write");
        let mut reader = StreamReader::try_new(Cursor::new(&bytes[..]), None).expect("reader");
        let batch = reader.next().expect("one batch").expect("ok");
        assert_eq!(batch.num_rows(), 3);
        let emb = batch.column(0).as_list::<i32>();
        let err = batch.column(1).as_string::<i32>();
        assert!(emb.is_valid(0) && emb.is_null(1) && emb.is_valid(2));
        assert_eq!(err.value(1), "boom");
        assert!(err.is_null(0));
        let first = emb.value(0);
        assert_eq!(
            first
                .as_primitive::<arrow_array::types::Float32Type>()
                .values(),
            &[1.0, 2.0]
        );
    }
}
