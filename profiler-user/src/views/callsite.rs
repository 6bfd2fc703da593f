//! The CALL SITE label of a stack: the program's own frame first, not the
//! allocation wrapper it went through.
//!
//! Programs rarely call malloc themselves: C++ goes through `operator new`
//! and `std::allocator`, GLib programs through `g_malloc`, GNU tools through
//! `xmalloc`, Python through `PyObject_Malloc` and the object constructors,
//! Rust through `__rust_alloc` and `RawVec`. Labelled by its innermost frames,
//! every such site would read `g_malloc <- ...`. The label starts at the first
//! frame outside these wrappers and names the outermost wrapper it came
//! through; the full stack stays in the folded, SVG, pprof and JSON outputs.

/// How many frames the label shows.
pub const CALL_SITE_FRAMES: usize = 4;

/// Function names (exact) of allocation wrappers.
const WRAPPERS: &[&str] = &[
    // C libraries and GNU tools.
    "strdup",
    "strndup",
    "__strdup",
    "__strndup",
    "xmalloc",
    "xcalloc",
    "xrealloc",
    "xzalloc",
    "xstrdup",
    "xstrndup",
    "xmemdup",
    "xnmalloc",
    "xcharalloc",
    "ximalloc",
    // GLib.
    "g_malloc",
    "g_malloc0",
    "g_malloc_n",
    "g_malloc0_n",
    "g_realloc",
    "g_realloc_n",
    "g_try_malloc",
    "g_try_malloc0",
    "g_try_realloc",
    "g_slice_alloc",
    "g_slice_alloc0",
    "g_memdup",
    "g_memdup2",
    "g_strdup",
    "g_strndup",
    // CPython's allocators and the object constructors that only allocate.
    "PyMem_Malloc",
    "PyMem_Calloc",
    "PyMem_Realloc",
    "PyMem_RawMalloc",
    "PyMem_RawCalloc",
    "PyMem_RawRealloc",
    "PyObject_Malloc",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "_PyObject_Malloc",
    "_PyObject_Calloc",
    "_PyObject_Realloc",
    "_PyMem_RawMalloc",
    "_PyMem_RawCalloc",
    "_PyMem_RawRealloc",
    "_PyMem_DebugMalloc",
    "_PyMem_DebugRawMalloc",
    "_PyMem_DebugRawAlloc",
    "pymalloc_alloc",
    "_PyObject_GC_Alloc",
    "_PyObject_GC_New",
    "_PyObject_GC_NewVar",
    "gc_alloc",
    "_PyObject_New",
    "_PyObject_NewVar",
    "PyType_GenericAlloc",
    "_PyType_AllocNoTrack",
    "PyBytes_FromStringAndSize",
    "_PyBytes_FromSize",
    "_PyBytes_Resize",
    "PyByteArray_Resize",
    "bytes_concat",
    "PyUnicode_New",
    "_PyLong_New",
    "PyList_New",
    "list_resize",
    "new_keys_object",
    "dictresize",
    // Redis (zmalloc.c): every allocation of the server goes through these.
    "zmalloc",
    "zcalloc",
    "zrealloc",
    "zstrdup",
    "zcalloc_num",
    "zmalloc_usable",
    "zcalloc_usable",
    "zrealloc_usable",
    "zmalloc_with_flags",
    "ztrymalloc",
    "ztrycalloc",
    "ztryrealloc",
    "ztrymalloc_usable",
    "ztrycalloc_usable",
    "ztryrealloc_usable",
    "ztrymalloc_usable_internal",
    "ztrycalloc_usable_internal",
    "ztryrealloc_usable_internal",
    // nginx's allocation and pool functions.
    "ngx_alloc",
    "ngx_calloc",
    "ngx_memalign",
    "ngx_palloc",
    "ngx_pnalloc",
    "ngx_pcalloc",
    "ngx_pmemalign",
    "ngx_palloc_small",
    "ngx_palloc_large",
    "ngx_palloc_block",
    // Rust's global allocator shims.
    "__rust_alloc",
    "__rust_alloc_zeroed",
    "__rust_realloc",
    "__rdl_alloc",
    "__rdl_alloc_zeroed",
    "__rdl_realloc",
    "__rg_alloc",
    "__rg_alloc_zeroed",
    "__rg_realloc",
];

/// Name prefixes and fragments of allocation wrappers (C++ and Rust
/// templates, whose names carry their type arguments). The standard
/// libraries' own frames count as wrappers on the allocation side of a stack:
/// `Cache::insert [via std::vector<...>::push_back]` says more than the
/// vector's growth internals.
fn is_wrapper_pattern(name: &str) -> bool {
    const STD: &[&str] = &[
        "std::",
        "__gnu_cxx::",
        "__cxx",
        "alloc::",
        "core::",
        "<std::",
        "<alloc::",
        "<core::",
    ];
    name.starts_with("operator new")
        || STD.iter().any(|p| name.starts_with(p))
        || name.contains("as core::alloc::Allocator>::allocate")
        || name.contains("as core::alloc::global::GlobalAlloc>::alloc")
        || name.contains("as core::alloc::global::GlobalAlloc>::realloc")
        // std's impls for the program's types (`<u8 as alloc::vec::...>::from_elem`).
        || name.contains(" as alloc::")
        // Rust's allocator shims under v0 mangling (`__rustc::__rust_alloc`).
        || ["__rustc::__rust_", "__rustc::__rdl_", "__rustc::__rg_"]
            .iter()
            .any(|p| name.starts_with(p))
        || name.contains("::allocate(")
        || name.ends_with("::allocate")
        || name.contains("::_M_allocate")
        || name.contains("::_M_create(")
        || name.starts_with("std::__allocate_at_least")
}

/// The function name of a frame label: without ` (file:line...)` and
/// without a trailing parameter list (`g_malloc (gmem.c:100)` → `g_malloc`).
fn function_name(label: &str) -> &str {
    label.split(" (").next().unwrap_or(label)
}

/// True when the frame labelled `label` is a known allocation wrapper.
pub fn is_allocation_wrapper(label: &str) -> bool {
    let name = function_name(label);
    WRAPPERS.contains(&name) || is_wrapper_pattern(name)
}

/// The label every view shows: [`call_site_label`] with
/// [`super::UNKNOWN_STACK`] for a site without frames.
pub fn call_site_text(frames: &[String]) -> String {
    call_site_label(frames, super::UNKNOWN_STACK)
}

/// `leaf <- caller <- caller <- ...` from frame labels given root first,
/// leaf last: the leaf-most frames outside allocation wrappers, and
/// `[via W]` naming the outermost wrapper skipped. A stack of wrappers only
/// is shown as it is.
pub fn call_site_label(frames: &[String], unknown: &str) -> String {
    if frames.is_empty() {
        return unknown.to_string();
    }
    let wrappers = frames
        .iter()
        .rev()
        .take_while(|f| is_allocation_wrapper(f))
        .count();
    let (frames, via) = if wrappers > 0 && wrappers < frames.len() {
        let outer = &frames[frames.len() - wrappers];
        (
            &frames[..frames.len() - wrappers],
            Some(function_name(outer)),
        )
    } else {
        (frames, None)
    };
    let mut parts: Vec<&str> = frames
        .iter()
        .rev()
        .take(CALL_SITE_FRAMES)
        .map(String::as_str)
        .collect();
    if frames.len() > CALL_SITE_FRAMES {
        parts.push("...");
    }
    let mut text = parts.join(" <- ");
    if let Some(w) = via {
        text.push_str(" [via ");
        text.push_str(w);
        text.push(']');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(frames: &[&str]) -> Vec<String> {
        frames.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn plain_stacks_show_their_four_innermost_frames() {
        let f = s(&["_start", "main", "run", "handle", "leak_malloc"]);
        assert_eq!(
            call_site_label(&f, "?"),
            "leak_malloc <- handle <- run <- main <- ..."
        );
        assert_eq!(call_site_label(&s(&["main"]), "?"), "main");
        assert_eq!(call_site_label(&[], "[unknown]"), "[unknown]");
    }

    #[test]
    fn wrappers_are_skipped_and_named() {
        let py = s(&[
            "main",
            "Py_BytesMain",
            "_PyEval_EvalFrameDefault",
            "PyNumber_Add",
            "bytes_concat",
            "_PyBytes_FromSize",
            "PyObject_Malloc",
            "_PyObject_Malloc",
        ]);
        assert_eq!(
            call_site_label(&py, "?"),
            "PyNumber_Add <- _PyEval_EvalFrameDefault <- Py_BytesMain <- main [via bytes_concat]"
        );
        let cpp = s(&[
            "main",
            "Cache::insert(Key const&)",
            "std::vector<int, std::allocator<int> >::_M_realloc_insert(int const&)",
            "std::_Vector_base<int, std::allocator<int> >::_M_allocate(unsigned long)",
            "__gnu_cxx::new_allocator<int>::allocate(unsigned long, void const*)",
            "operator new(unsigned long)",
        ]);
        assert_eq!(
            call_site_label(&cpp, "?"),
            "Cache::insert(Key const&) <- main \
             [via std::vector<int, std::allocator<int> >::_M_realloc_insert(int const&)]"
        );
        let glib = s(&[
            "main",
            "load_config (config.c:41)",
            "g_strdup (gstrfuncs.c:362)",
            "g_malloc (gmem.c:130)",
        ]);
        assert_eq!(
            call_site_label(&glib, "?"),
            "load_config (config.c:41) <- main [via g_strdup]"
        );
        let rust = s(&[
            "main",
            "app::build",
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "alloc::raw_vec::finish_grow",
            "__rust_alloc",
        ]);
        assert_eq!(
            call_site_label(&rust, "?"),
            "app::build <- main [via alloc::raw_vec::RawVec<T,A>::grow_one]"
        );
    }

    #[test]
    fn rust_global_allocators_are_wrappers() {
        // As tikv-jemallocator's stacks demangle (Rust 1.95, v0 shims).
        let grown = s(&[
            "main",
            "rust_jemalloc::main",
            "rust_jemalloc::leak_grown",
            "<alloc::raw_vec::RawVecInner>::reserve_exact",
            "alloc::alloc::realloc",
            "__rustc::__rust_realloc",
            "<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::realloc",
        ]);
        assert_eq!(
            call_site_label(&grown, "?"),
            "rust_jemalloc::leak_grown <- rust_jemalloc::main <- main \
             [via <alloc::raw_vec::RawVecInner>::reserve_exact]"
        );
        let zeroed = s(&[
            "rust_jemalloc::leak_zeroed",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "__rustc::__rust_alloc_zeroed",
            "<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::alloc_zeroed",
        ]);
        assert_eq!(
            call_site_label(&zeroed, "?"),
            "rust_jemalloc::leak_zeroed [via <u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem]"
        );
    }

    #[test]
    fn redis_and_nginx_wrappers_are_skipped() {
        // As Debian's redis-server 7.0 stacks read under `redis-benchmark -t lpush`.
        let redis = s(&[
            "main",
            "call",
            "pushGenericCommand",
            "quicklistPushHead",
            "lpPrepend",
            "lpInsert",
            "zrealloc_usable",
            "ztryrealloc_usable_internal",
        ]);
        assert_eq!(
            call_site_label(&redis, "?"),
            "lpInsert <- lpPrepend <- quicklistPushHead <- pushGenericCommand <- ... [via zrealloc_usable]"
        );
        let nginx = s(&[
            "ngx_http_process_request_line",
            "ngx_http_alloc_large_header_buffer",
            "ngx_palloc",
            "ngx_palloc_large",
            "ngx_alloc",
        ]);
        assert_eq!(
            call_site_label(&nginx, "?"),
            "ngx_http_alloc_large_header_buffer <- ngx_http_process_request_line [via ngx_palloc]"
        );
    }

    #[test]
    fn a_stack_of_wrappers_only_is_shown_as_it_is() {
        let f = s(&["g_malloc"]);
        assert_eq!(call_site_label(&f, "?"), "g_malloc");
        let f = s(&["xmalloc", "xstrdup"]);
        assert_eq!(call_site_label(&f, "?"), "xstrdup <- xmalloc");
    }
}
