/* The recorder's per-record work in C: encoding a batch of record tuples as JSON lines (encode.py's `encode`, which
 * stays the reference and the fallback when this module is not built), a tensor's envelope text (values.py's
 * `encoded` for tensors, and its data id), the numbering of a call's tensors (values.py's `number`), the logged
 * call's wrapper (logged_importlib_bootstrap.py's `logged` and `numbered`) and the hash of a tensor in host memory
 * (tensors.py's `tensor_hash`).
 *
 * Each gives exactly what the Python code gives (tests/test_speedups.py and tests/test_tracking.py compare them).
 * What is rare or needs Python's own formatting (state records, exceptions, keyword arguments, proxies, relabelled
 * meta variables, a new kind of tensor) is handed to the Python helpers given to `configure`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __linux__
#include <time.h>
#endif

enum { PRE = 0, POST = 1, EXC = 2, DICT = 3 };
enum { NAME_JSON = 7, BOUND_JSON = 8 }; /* lookup.py's info tuple */

static PyObject *json_text;  /* _json(v) -> str */
static PyObject *relabelled; /* relabelled(meta) -> dict */
static PyObject *dict_line;  /* dict_line(record, t, pid, tid, meta) -> bytes | None */
static PyObject *kwargs_text; /* _kwargs(kwargs) -> str */

/* values.py's state, shared with its Python code */
static PyObject *tensor_json;     /* (type, dtype, layout, device, shape, is_leaf | None) -> shared envelope JSON */
static PyObject *new_tensor_text; /* _tensor_encoded(v) -> str: a kind of tensor not seen yet */
static PyObject *data_ids;        /* id(storage) -> (weak reference to it, its data id) */
static long long next_data_id;
static PyObject *s_dtype, *s_layout, *s_device, *s_shape, *s_requires_grad, *s_is_leaf, *s_untyped_storage;

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buffer;

static int grow(Buffer *b, Py_ssize_t more) {
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + more)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int put(Buffer *b, const char *s, Py_ssize_t n) {
    if (grow(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

#define PUT_LITERAL(b, s) put((b), (s), (Py_ssize_t)sizeof(s) - 1)

static int put_int(Buffer *b, long long v) {
    char tmp[24];
    int i = 24;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[--i] = '-';
    return put(b, tmp + i, 24 - i);
}

/* A str as its UTF-8 bytes (the text is JSON already). */
static int put_str(Buffer *b, PyObject *s) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL)
        return -1;
    return put(b, u, n);
}

/* An int as Python formats it (str(v)); an int beyond 64 bits through str(). */
static int put_pyint(Buffer *b, PyObject *v) {
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (!overflow)
        return put_int(b, x);
    PyObject *s = PyObject_Str(v);
    if (s == NULL)
        return -1;
    int rc = put_str(b, s);
    Py_DECREF(s);
    return rc;
}

/* _json(v) of a Python helper, written out. */
static int put_json(Buffer *b, PyObject *v) {
    PyObject *s = PyObject_CallOneArg(json_text, v);
    if (s == NULL)
        return -1;
    int rc = put_str(b, s);
    Py_DECREF(s);
    return rc;
}

/* fn(meta), once per distinct meta dict of a batch (by identity: the records keep their dicts alive meanwhile). */
static PyObject *per_meta(PyObject *cache, PyObject *fn, PyObject *meta) {
    PyObject *key = PyLong_FromVoidPtr(meta);
    if (key == NULL)
        return NULL;
    PyObject *value = PyDict_GetItemWithError(cache, key);
    if (value != NULL) {
        Py_DECREF(key);
        return Py_NewRef(value);
    }
    if (PyErr_Occurred() || (value = PyObject_CallOneArg(fn, meta)) == NULL || PyDict_SetItem(cache, key, value) < 0) {
        Py_XDECREF(value);
        Py_DECREF(key);
        return NULL;
    }
    Py_DECREF(key);
    return value;
}

static int put_head(Buffer *b, const char *type, Py_ssize_t type_len, long long base, PyObject *n, long long t) {
    /* {"type":"<type>","func_call_id":<base+n>,"time":<t>, */
    long long call = PyLong_AsLongLong(n);
    if (call == -1 && PyErr_Occurred())
        return -1;
    if (PUT_LITERAL(b, "{\"type\":\"") < 0 || put(b, type, type_len) < 0 || PUT_LITERAL(b, "\",\"func_call_id\":") < 0 ||
        put_int(b, base + call) < 0 || PUT_LITERAL(b, ",\"time\":") < 0 || put_int(b, t) < 0 || PUT_LITERAL(b, ",") < 0)
        return -1;
    return 0;
}

static int put_parent(Buffer *b, PyObject *parent, long long base) {
    if (PUT_LITERAL(b, "\"parent_id\":") < 0)
        return -1;
    if (parent == Py_None)
        return PUT_LITERAL(b, "null,");
    long long p = PyLong_AsLongLong(parent);
    if (p == -1 && PyErr_Occurred())
        return -1;
    if (put_int(b, base + p) < 0)
        return -1;
    return PUT_LITERAL(b, ",");
}

/* "function":<name>,"process_id":<pid>,"thread_id":<tid>,"meta_vars":<meta> */
static int put_who(Buffer *b, PyObject *info, long long pid, long long tid, PyObject *meta) {
    if (PUT_LITERAL(b, "\"function\":") < 0 || put_str(b, PyTuple_GET_ITEM(info, NAME_JSON)) < 0 ||
        PUT_LITERAL(b, ",\"process_id\":") < 0 || put_int(b, pid) < 0 || PUT_LITERAL(b, ",\"thread_id\":") < 0 ||
        put_int(b, tid) < 0 || PUT_LITERAL(b, ",\"meta_vars\":") < 0 || put_str(b, meta) < 0)
        return -1;
    return 0;
}

static int put_pre(Buffer *b, PyObject *r, long long base, long long t, long long pid, long long tid, PyObject *meta) {
    PyObject *info = PyTuple_GET_ITEM(r, 4), *site = PyTuple_GET_ITEM(r, 5), *obj_id = PyTuple_GET_ITEM(r, 6);
    PyObject *envs = PyTuple_GET_ITEM(r, 8), *kwargs = PyTuple_GET_ITEM(r, 9), *proxies = PyTuple_GET_ITEM(r, 10);
    if (put_head(b, "function_call (pre)", 19, base, PyTuple_GET_ITEM(r, 1), t) < 0 || PUT_LITERAL(b, "\"obj_id\":") < 0)
        return -1;
    if ((obj_id == Py_None ? PUT_LITERAL(b, "null") : put_pyint(b, obj_id)) < 0 || PUT_LITERAL(b, ",") < 0 ||
        put_parent(b, PyTuple_GET_ITEM(r, 7), base) < 0 || put_who(b, info, pid, tid, meta) < 0 ||
        PUT_LITERAL(b, ",\"is_bound_method\":") < 0 || put_str(b, PyTuple_GET_ITEM(info, BOUND_JSON)) < 0 ||
        PUT_LITERAL(b, ",\"site\":") < 0)
        return -1;
    if ((PyLong_CheckExact(site) ? put_pyint(b, site) : put_json(b, site)) < 0 || PUT_LITERAL(b, ",\"args\":{") < 0)
        return -1;
    if (!PyTuple_Check(envs)) {
        PyErr_SetString(PyExc_TypeError, "argument envelopes must be a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(envs);
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((i && PUT_LITERAL(b, ",") < 0) || PUT_LITERAL(b, "\"") < 0 || put_int(b, i) < 0 || PUT_LITERAL(b, "\":") < 0 ||
            put_str(b, PyTuple_GET_ITEM(envs, i)) < 0)
            return -1;
    }
    if (PUT_LITERAL(b, "},\"kwargs\":") < 0)
        return -1;
    if (kwargs == Py_None || (PyDict_Check(kwargs) && PyDict_GET_SIZE(kwargs) == 0)) {
        if (PUT_LITERAL(b, "{}") < 0)
            return -1;
    } else {
        PyObject *text = PyObject_CallOneArg(kwargs_text, kwargs);
        if (text == NULL)
            return -1;
        int rc = put_str(b, text);
        Py_DECREF(text);
        if (rc < 0)
            return -1;
    }
    if (PUT_LITERAL(b, ",\"proxy_obj_names\":") < 0)
        return -1;
    if (PyObject_IsTrue(proxies)) {
        if (put_json(b, proxies) < 0)
            return -1;
    } else if (PUT_LITERAL(b, "[]") < 0) {
        return -1;
    }
    return PUT_LITERAL(b, "}\n");
}

static int put_post(Buffer *b, PyObject *r, long long base, long long t, long long pid, long long tid, PyObject *meta) {
    if (put_head(b, "function_call (post)", 20, base, PyTuple_GET_ITEM(r, 1), t) < 0 ||
        put_parent(b, PyTuple_GET_ITEM(r, 5), base) < 0 || put_who(b, PyTuple_GET_ITEM(r, 4), pid, tid, meta) < 0 ||
        PUT_LITERAL(b, ",\"return_values\":") < 0 || put_str(b, PyTuple_GET_ITEM(r, 6)) < 0)
        return -1;
    return PUT_LITERAL(b, "}\n");
}

static int put_exc(Buffer *b, PyObject *r, long long base, long long t, long long pid, long long tid, PyObject *meta) {
    if (put_head(b, "function_call (post) (exception)", 32, base, PyTuple_GET_ITEM(r, 1), t) < 0 ||
        put_parent(b, PyTuple_GET_ITEM(r, 5), base) < 0 || put_who(b, PyTuple_GET_ITEM(r, 4), pid, tid, meta) < 0 ||
        PUT_LITERAL(b, ",\"exception\":") < 0 || put_json(b, PyTuple_GET_ITEM(r, 6)) < 0 ||
        PUT_LITERAL(b, ",\"exception_msg\":") < 0 || put_json(b, PyTuple_GET_ITEM(r, 7)) < 0)
        return -1;
    return PUT_LITERAL(b, "}\n");
}

static PyObject *encode(PyObject *self, PyObject *args) {
    PyObject *records, *since_obj;
    long long pid, tid, last_time;
    if (!PyArg_ParseTuple(args, "O!LLLO", &PyList_Type, &records, &pid, &tid, &last_time, &since_obj))
        return NULL;
    if (json_text == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_speedups.configure() was not called");
        return NULL;
    }
    long long since = 0;
    int relabel = since_obj != Py_None;
    if (relabel && (since = PyLong_AsLongLong(since_obj)) == -1 && PyErr_Occurred())
        return NULL;
    Buffer b = {NULL, 0, 0};
    PyObject *metas = PyDict_New(), *moved = PyDict_New(), *result = NULL;
    PyObject *last_meta = NULL, *last_json = NULL; /* borrowed: the most recent meta dict and its JSON */
    if (metas == NULL || moved == NULL)
        goto done;
    long long base = pid * 1000000000LL;
    Py_ssize_t n = PyList_GET_SIZE(records);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) < 5) {
            PyErr_SetString(PyExc_TypeError, "a record must be a tuple");
            goto done;
        }
        long long t = PyLong_AsLongLong(PyTuple_GET_ITEM(r, 2));
        if (t == -1 && PyErr_Occurred())
            goto done;
        PyObject *meta = PyTuple_GET_ITEM(r, 3);
        PyObject *owned = NULL;
        if (relabel && t >= since && meta != Py_None) {
            if ((owned = per_meta(moved, relabelled, meta)) == NULL) /* made from `since` on: relabelled */
                goto done;
            meta = owned;
        }
        if (t <= last_time)
            t = last_time + 1;
        last_time = t;
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(r, 0));
        int rc;
        if (kind == DICT) {
            PyObject *line = PyObject_CallFunction(dict_line, "OLLLO", PyTuple_GET_ITEM(r, 4), t, pid, tid, meta);
            rc = line == NULL ? -1 : line == Py_None ? 0 : put(&b, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line));
            Py_XDECREF(line);
        } else {
            PyObject *text;
            if (meta == last_meta) {
                text = Py_NewRef(last_json);
            } else {
                text = per_meta(metas, json_text, meta);
                last_meta = meta, last_json = text; /* kept alive by the metas cache */
            }
            if (text == NULL) {
                Py_XDECREF(owned);
                goto done;
            }
            Py_ssize_t size = PyTuple_GET_SIZE(r);
            if (kind == PRE && size == 11)
                rc = put_pre(&b, r, base, t, pid, tid, text);
            else if (kind == POST && size == 7)
                rc = put_post(&b, r, base, t, pid, tid, text);
            else if (kind == EXC && size == 8)
                rc = put_exc(&b, r, base, t, pid, tid, text);
            else {
                PyErr_SetString(PyExc_TypeError, "a record of an unknown kind");
                rc = -1;
            }
            Py_DECREF(text);
        }
        Py_XDECREF(owned);
        if (rc < 0)
            goto done;
    }
    PyObject *data = PyBytes_FromStringAndSize(b.data ? b.data : "", b.len);
    if (data != NULL) {
        result = Py_BuildValue("(NL)", data, last_time);
    }
done:
    PyMem_Free(b.data);
    Py_XDECREF(metas);
    Py_XDECREF(moved);
    return result;
}

/* A storage died: its entry goes, unless a new storage at the same address has taken the key (`self` is the key). */
static PyObject *forget(PyObject *key, PyObject *ref) {
    PyObject *known = PyDict_GetItemWithError(data_ids, key);
    if (known == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    if (PyTuple_GET_ITEM(known, 0) == ref && PyDict_DelItem(data_ids, key) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef forget_def = {"forget", forget, METH_O, NULL};

/* values._data_id: the order of appearance of the tensor's storage; None for a tensor without one (sparse). */
static PyObject *data_id(PyObject *self, PyObject *v) {
    PyObject *storage = PyObject_CallMethodNoArgs(v, s_untyped_storage);
    if (storage == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RuntimeError) || PyErr_ExceptionMatches(PyExc_NotImplementedError)) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        return NULL;
    }
    PyObject *key = PyLong_FromVoidPtr(storage), *result = NULL;
    if (key == NULL)
        goto done;
    PyObject *known = PyDict_GetItemWithError(data_ids, key);
    if (known != NULL && PyWeakref_GetObject(PyTuple_GET_ITEM(known, 0)) == storage) {
        result = Py_NewRef(PyTuple_GET_ITEM(known, 1));
        goto done;
    }
    if (PyErr_Occurred())
        goto done;
    PyObject *callback = PyCFunction_New(&forget_def, key);
    if (callback == NULL)
        goto done;
    PyObject *ref = PyWeakref_NewRef(storage, callback);
    Py_DECREF(callback);
    if (ref == NULL)
        goto done;
    PyObject *n = PyLong_FromLongLong(next_data_id++);
    PyObject *entry = n == NULL ? NULL : PyTuple_Pack(2, ref, n);
    Py_DECREF(ref);
    if (entry != NULL && PyDict_SetItem(data_ids, key, entry) == 0)
        result = Py_NewRef(n);
    Py_XDECREF(entry);
    Py_XDECREF(n);
done:
    Py_XDECREF(key);
    Py_DECREF(storage);
    return result;
}

/* values.encoded for a tensor: the shared envelope of its kind with its data id appended. A tensor torch refuses an
 * attribute of (a no_grad view's is_leaf, a nested tensor's shape) goes to values._tensor_encoded, as in Python. */
static PyObject *tensor_text(PyObject *self, PyObject *v) {
    PyObject *items[6] = {Py_NewRef((PyObject *)Py_TYPE(v)), NULL, NULL, NULL, NULL, NULL};
    PyObject *key = NULL, *result = NULL, *shared = NULL;
    if ((items[1] = PyObject_GetAttr(v, s_dtype)) == NULL || (items[2] = PyObject_GetAttr(v, s_layout)) == NULL ||
        (items[3] = PyObject_GetAttr(v, s_device)) == NULL || (items[4] = PyObject_GetAttr(v, s_shape)) == NULL)
        goto refused;
    PyObject *grad = PyObject_GetAttr(v, s_requires_grad);
    if (grad == NULL)
        goto refused;
    int requires_grad = PyObject_IsTrue(grad);
    Py_DECREF(grad);
    if (requires_grad < 0)
        goto refused;
    items[5] = requires_grad ? PyObject_GetAttr(v, s_is_leaf) : Py_NewRef(Py_None); /* as values._tensor_encoded */
    if (items[5] == NULL)
        goto refused;
    if ((key = PyTuple_New(6)) == NULL)
        goto done;
    for (int i = 0; i < 6; i++) {
        PyTuple_SET_ITEM(key, i, items[i]);
        items[i] = NULL;
    }
    shared = PyDict_GetItemWithError(tensor_json, key);
    if (shared == NULL) {
        if (PyErr_Occurred())
            goto refused;
        result = PyObject_CallOneArg(new_tensor_text, v);
        goto done;
    }
    Py_INCREF(shared); /* the cache may be cleared while the data id is looked up */
    PyObject *n = data_id(NULL, v);
    if (n == NULL || n == Py_None) {
        result = n == NULL ? NULL : Py_NewRef(shared);
        Py_XDECREF(n);
        Py_DECREF(shared);
        goto done;
    }
    long long id = PyLong_AsLongLong(n);
    Py_DECREF(n);
    Py_ssize_t len = PyUnicode_GET_LENGTH(shared) - 1; /* the envelope's closing brace */
    if (id == -1 && PyErr_Occurred()) {
        /* result stays NULL */
    } else if (PyUnicode_IS_COMPACT_ASCII(shared)) {
        char tail[40];
        int nt = snprintf(tail, sizeof tail, ",\"data_id\":%lld}", id);
        if ((result = PyUnicode_New(len + nt, 127)) != NULL) {
            memcpy(PyUnicode_DATA(result), PyUnicode_DATA(shared), len);
            memcpy((char *)PyUnicode_DATA(result) + len, tail, nt);
        }
    } else {
        PyObject *head = PyUnicode_Substring(shared, 0, len);
        result = head == NULL ? NULL : PyUnicode_FromFormat("%U,\"data_id\":%lld}", head, id);
        Py_XDECREF(head);
    }
    Py_DECREF(shared);
    goto done;
refused: /* an Exception while reading the key: the Python helper reads what it can */
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        result = PyObject_CallOneArg(new_tensor_text, v);
    }
done:
    for (int i = 0; i < 6; i++)
        Py_XDECREF(items[i]);
    Py_XDECREF(key);
    return result;
}

static PyObject *configure_values(PyObject *self, PyObject *args) {
    PyObject *cache, *new_text, *ids;
    if (!PyArg_ParseTuple(args, "O!OO!", &PyDict_Type, &cache, &new_text, &PyDict_Type, &ids))
        return NULL;
    Py_XSETREF(tensor_json, Py_NewRef(cache));
    Py_XSETREF(new_tensor_text, Py_NewRef(new_text));
    Py_XSETREF(data_ids, Py_NewRef(ids));
    Py_RETURN_NONE;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *j, *r, *d, *k;
    if (!PyArg_ParseTuple(args, "OOOO", &j, &r, &d, &k))
        return NULL;
    Py_XSETREF(json_text, Py_NewRef(j));
    Py_XSETREF(relabelled, Py_NewRef(r));
    Py_XSETREF(dict_line, Py_NewRef(d));
    Py_XSETREF(kwargs_text, Py_NewRef(k));
    Py_RETURN_NONE;
}

/* ==== The logged call as a C callable ================================================================================
 * logged_importlib_bootstrap.py's `logged` and `numbered` (which stay the reference and the fallback), as a callable
 * type. Being no Python frame is its point: while the callee runs, the innermost Python frame is the program's own,
 * so a warning that torch's C++ code raises with stacklevel 1 (or Python code with any stacklevel), `inspect` and
 * tracebacks see the program's line, as in the plain run. The plain path (most calls) is done here; the general
 * path's halves before and after the call are the Python `general_begin` and `general_end`. */

typedef struct {
    PyObject_HEAD
    PyObject *site, *fn, *info, *owner; /* info NULL: a call that only numbers its tensors (`numbered`) */
    vectorcallfunc vectorcall;
} LoggedCall;

enum { INFO_NAME = 0, INFO_BOUND = 1, INFO_PLAIN = 9 }; /* lookup.py's info tuple */

static PyObject *calls_globals, *meta_globals;     /* the dicts `state`, `compiling` and `current` are read from */
static PyObject *general_begin, *general_end;      /* the general path's halves */
static PyObject *closed_by_exception, *recorder_error_fn, *encoded_fn, *encoded_return_fn, *number_fn;
static PyObject *tensor_types;                     /* values._tensor_types: tensor_text's types */
static PyObject *plain_types;                      /* types values.number found to hold no tensor */
static Py_ssize_t batch_size, max_items;
static PyObject *pre_kind, *post_kind, *no_proxies;
static PyObject *s_state, *s_compiling, *s_current, *s_plain, *s_local, *s_thread, *s_new_thread, *s_stack,
    *s_unrecorded, *s_records, *s_steps, *s_refresh, *s_ids, *s_tracker, *s_names_by_id, *s_proxy_names, *s_flush_thread;

/* time.monotonic_ns(): read directly on Linux, where CPython reads CLOCK_MONOTONIC; elsewhere its clock may differ
 * (macOS: mach_absolute_time), so it is called. */
#ifdef __linux__
static PyObject *now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
}
#else
static PyObject *monotonic_ns;
static PyObject *now_ns(void) {
    return PyObject_CallNoArgs(monotonic_ns);
}
#endif

/* A recorder error (an Exception) is reported once and the call goes on; anything else (KeyboardInterrupt) is raised. */
static int recorder_failed(void) {
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *r = PyObject_CallOneArg(recorder_error_fn, value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *args_tuple(PyObject *const *args, Py_ssize_t nargs) {
    PyObject *t = PyTuple_New(nargs);
    if (t == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(t, i, Py_NewRef(args[i]));
    return t;
}

/* The keyword arguments as a dict (empty when there are none). */
static PyObject *kwargs_dict(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    Py_ssize_t nk = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *d = PyDict_New();
    for (Py_ssize_t i = 0; d != NULL && i < nk; i++) {
        if (PyDict_SetItem(d, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0)
            Py_CLEAR(d);
    }
    return d;
}

/* values.encoded(v): a tensor of a known type straight to tensor_text, the rest through the Python code. */
static PyObject *encode_value(PyObject *v) {
    int tensor = PySet_Contains(tensor_types, (PyObject *)Py_TYPE(v));
    if (tensor < 0)
        return NULL;
    return tensor ? tensor_text(NULL, v) : PyObject_CallOneArg(encoded_fn, v);
}

/* The exception the callee raised is kept aside while `record(*callargs, exc)` records it, then raised again as it
 * was (the same object and traceback); `callargs` has a last slot for the exception. */
static void record_raised(PyObject *record, PyObject **callargs, Py_ssize_t n) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    callargs[n - 1] = value != NULL ? value : Py_None;
    PyObject *r = PyObject_Vectorcall(record, callargs, n, NULL);
    if (r == NULL) { /* the recorder's own failure is raised instead, as from the Python wrapper */
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return;
    }
    Py_DECREF(r);
    PyErr_Restore(type, value, tb);
}

/* untracked_record: the pre and post records leave the garbage collector's lists as they are made. They hold only
 * atoms, the meta dict (never changed once made) and tuples, dicts and lists of strings, so they can be in no cycle;
 * but a tuple holding a dict is never untracked by the collector itself, and a batch of records waits in memory
 * long enough to be moved to the oldest generation, whose growth makes the collector walk every object of the
 * process (torch's included: 80-90 ms) after every few tens of thousands of logged calls. */

/* The post record (POST, n, time, meta, info, parent, return envelope) appended to `records`: timed as the call
 * returned, before its result is encoded (as `logged` does). */
static int append_post(PyObject *records, PyObject *n, PyObject *info, PyObject *parent, PyObject *result) {
    PyObject *stamp = now_ns();
    if (stamp == NULL)
        return -1;
    PyObject *meta = PyDict_GetItemWithError(meta_globals, s_current), *ret = NULL, *post = NULL;
    if (meta == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_RuntimeError, "meta.current is missing");
    Py_XINCREF(meta); /* encoding may replace meta.current */
    if (meta != NULL)
        ret = PyTuple_CheckExact(result) ? PyObject_CallOneArg(encoded_return_fn, result) : encode_value(result);
    if (ret != NULL && (post = PyTuple_Pack(7, post_kind, n, stamp, meta, info, parent, ret)) != NULL)
        PyObject_GC_UnTrack(post); /* see untracked_record */
    int rc = post == NULL ? -1 : PyList_Append(records, post);
    Py_XDECREF(post);
    Py_XDECREF(ret);
    Py_XDECREF(meta);
    Py_DECREF(stamp);
    return rc;
}

/* lookup.wraps_open_call */
static int wraps_open_call(PyObject *open_pre, PyObject *info, PyObject *owner, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *open_info = PyTuple_GET_ITEM(open_pre, 4);
    PyObject *a = PyTuple_GET_ITEM(open_info, INFO_NAME), *b = PyTuple_GET_ITEM(info, INFO_NAME);
    if (a != b) {
        int same = PyObject_RichCompareBool(a, b, Py_EQ);
        if (same <= 0)
            return same;
    }
    PyObject *this = owner != Py_None ? owner : (PyObject_IsTrue(PyTuple_GET_ITEM(info, INFO_BOUND)) && nargs) ? args[0] : NULL;
    if (this == NULL)
        return 0;
    PyObject *id = PyLong_FromVoidPtr(this);
    if (id == NULL)
        return -1;
    int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(open_pre, 6), id, Py_EQ);
    Py_DECREF(id);
    return same;
}

/* `logged`'s plain path: a pre record, the call, a post (or exception) record. */
static PyObject *plain_path(LoggedCall *self, PyObject *s, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *info = self->info, *owner = self->owner;
    PyObject *local = NULL, *thread = NULL, *stack = NULL, *records = NULL, *pre = NULL, *envs = NULL, *kw = NULL;
    PyObject *n = NULL, *stamp = NULL, *obj_id = NULL, *proxies = NULL, *tracker = NULL, *ids = NULL, *result;
    PyObject *parent = Py_None, *meta, *steps;
    if ((local = PyObject_GetAttr(s, s_local)) == NULL || (thread = PyObject_GetAttr(local, s_thread)) == NULL)
        goto failed;
    if (thread == Py_None) {
        Py_DECREF(thread);
        if ((thread = PyObject_CallMethodNoArgs(s, s_new_thread)) == NULL)
            goto failed;
    }
    if ((stack = PyObject_GetAttr(thread, s_stack)) == NULL)
        goto failed;
    if (!PyList_Check(stack)) {
        PyErr_SetString(PyExc_TypeError, "a thread's stack must be a list");
        goto failed;
    }
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    int refresh = PyLong_CheckExact(self->site); /* the program's call, or a framework's outermost one */
    if (!refresh && depth == 0) {
        PyObject *unrecorded = PyObject_GetAttr(thread, s_unrecorded);
        int open = unrecorded == NULL ? -1 : PyObject_IsTrue(unrecorded);
        Py_XDECREF(unrecorded);
        if (open < 0)
            goto failed;
        refresh = !open;
    }
    if (refresh) {
        if ((steps = PyObject_GetAttr(s, s_steps)) == NULL)
            goto failed;
        PyObject *r = PyObject_CallMethodNoArgs(steps, s_refresh);
        Py_DECREF(steps);
        if (r == NULL)
            goto failed;
        Py_DECREF(r);
    } else if (depth) {
        int again = wraps_open_call(PyList_GET_ITEM(stack, depth - 1), info, owner, args, nargs);
        if (again < 0)
            goto failed;
        if (again) { /* the open call itself, reached again through a wrapper: logged once */
            result = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
            goto done;
        }
    }
    Py_ssize_t first = owner != Py_None;
    if ((envs = PyTuple_New(first + nargs)) == NULL)
        goto failed;
    for (Py_ssize_t i = 0; i < first + nargs; i++) {
        PyObject *env = encode_value(i < first ? owner : args[i - first]);
        if (env == NULL)
            goto failed;
        PyTuple_SET_ITEM(envs, i, env);
    }
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        if ((kw = PyDict_New()) == NULL)
            goto failed;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *env = encode_value(args[nargs + i]);
            int rc = env == NULL ? -1 : PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), env);
            Py_XDECREF(env);
            if (rc < 0)
                goto failed;
        }
    }
    if ((tracker = PyObject_GetAttr(s, s_tracker)) == NULL)
        goto failed;
    if (tracker != Py_None) {
        PyObject *names = PyObject_GetAttr(tracker, s_names_by_id);
        int any = names == NULL ? -1 : PyObject_IsTrue(names);
        Py_XDECREF(names);
        if (any < 0)
            goto failed;
        if (any) {
            PyObject *t = args_tuple(args, nargs);
            proxies = t == NULL ? NULL : PyObject_CallMethodObjArgs(tracker, s_proxy_names, owner, t, NULL);
            Py_XDECREF(t);
            if (proxies == NULL)
                goto failed;
            int some = PyObject_IsTrue(proxies);
            if (some < 0)
                goto failed;
            if (!some)
                Py_SETREF(proxies, Py_NewRef(no_proxies));
        }
    }
    if ((ids = PyObject_GetAttr(s, s_ids)) == NULL || (n = PyIter_Next(ids)) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "call ids ran out");
        goto failed;
    }
    if ((meta = PyDict_GetItemWithError(meta_globals, s_current)) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "meta.current is missing");
        goto failed;
    }
    if (owner != Py_None)
        obj_id = PyLong_FromVoidPtr(owner);
    else if (nargs && PyObject_IsTrue(PyTuple_GET_ITEM(info, INFO_BOUND)))
        obj_id = PyLong_FromVoidPtr(args[0]);
    else
        obj_id = Py_NewRef(Py_None);
    if (obj_id == NULL || (stamp = now_ns()) == NULL)
        goto failed;
    if (depth)
        parent = PyTuple_GET_ITEM(PyList_GET_ITEM(stack, depth - 1), 1);
    pre = PyTuple_Pack(11, pre_kind, n, stamp, meta, info, self->site, obj_id, parent, envs, kw ? kw : Py_None,
                       proxies ? proxies : no_proxies);
    if (pre != NULL)
        PyObject_GC_UnTrack(pre); /* see untracked_record */
    if (pre == NULL || (records = PyObject_GetAttr(thread, s_records)) == NULL || PyList_Append(records, pre) < 0 ||
        PyList_Append(stack, pre) < 0)
        goto failed;
    Py_INCREF(parent); /* the pre record leaves the stack during the call */
    result = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    if (result == NULL) {
        PyObject *callargs[5] = {thread, n, info, parent, NULL};
        record_raised(closed_by_exception, callargs, 5);
    } else {
        int rc = 0;
        Py_ssize_t top = PyList_GET_SIZE(stack);
        if (top && PyList_GET_ITEM(stack, top - 1) == pre)
            rc = PyList_SetSlice(stack, top - 1, top, NULL);
        if (rc == 0)
            rc = append_post(records, n, info, parent, result);
        if (rc == 0 && PyList_GET_SIZE(records) >= batch_size) {
            PyObject *r = PyObject_CallMethodOneArg(s, s_flush_thread, thread);
            rc = r == NULL ? -1 : 0;
            Py_XDECREF(r);
        }
        if (rc < 0 && recorder_failed() < 0)
            Py_CLEAR(result);
    }
    Py_DECREF(parent);
    goto done;
failed: /* the recorder failed before the call: the call runs plainly */
    result = recorder_failed() < 0 ? NULL : PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
done:
    Py_XDECREF(local);
    Py_XDECREF(thread);
    Py_XDECREF(stack);
    Py_XDECREF(records);
    Py_XDECREF(pre);
    Py_XDECREF(envs);
    Py_XDECREF(kw);
    Py_XDECREF(n);
    Py_XDECREF(stamp);
    Py_XDECREF(obj_id);
    Py_XDECREF(proxies);
    Py_XDECREF(tracker);
    Py_XDECREF(ids);
    return result;
}

/* `logged`'s general path: the Python halves around the call. */
static PyObject *general_path(LoggedCall *self, PyObject *s, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *t = args_tuple(args, nargs), *kwargs = t == NULL ? NULL : kwargs_dict(args, nargs, kwnames);
    if (kwargs == NULL) {
        Py_XDECREF(t);
        return NULL;
    }
    PyObject *begin_args[7] = {s, self->site, self->fn, self->info, self->owner, t, kwargs};
    PyObject *token = PyObject_Vectorcall(general_begin, begin_args, 7, NULL);
    Py_DECREF(t);
    Py_DECREF(kwargs);
    if (token == NULL)
        return NULL;
    PyObject *result = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    if (token == Py_None) /* nothing to record: not recording, compiling, the open call again, a recorder error */
        goto done;
    if (result == NULL) {
        PyObject *callargs[3] = {token, Py_None, NULL};
        record_raised(general_end, callargs, 3);
    } else {
        PyObject *end_args[3] = {token, result, Py_None};
        PyObject *r = PyObject_Vectorcall(general_end, end_args, 3, NULL);
        if (r == NULL)
            Py_CLEAR(result);
        Py_XDECREF(r);
    }
done:
    Py_DECREF(token);
    return result;
}

/* values.number(v): the data ids of the tensors in `v`, given in the order `encoded(v)` would give them. Tensors,
 * lists, tuples and dicts here; a value of any other type goes once to the Python code (which may find a new tensor
 * type), and its type is remembered when that found no tensor. */
static int number_value(PyObject *v) {
    PyObject *type = (PyObject *)Py_TYPE(v);
    int found = PySet_Contains(tensor_types, type);
    if (found) {
        PyObject *id = found < 0 ? NULL : data_id(NULL, v);
        Py_XDECREF(id);
        return id == NULL ? -1 : 0;
    }
    if (PyList_CheckExact(v) || PyTuple_CheckExact(v) || PyDict_CheckExact(v)) {
        if (Py_EnterRecursiveCall(" while numbering a call's values"))
            return -1;
        int rc = 0;
        if (PyDict_CheckExact(v)) {
            Py_ssize_t pos = 0, i = 0;
            PyObject *key, *item;
            while (rc == 0 && i++ < max_items && PyDict_Next(v, &pos, &key, &item)) {
                Py_INCREF(item);
                rc = number_value(item);
                Py_DECREF(item);
            }
        } else {
            for (Py_ssize_t i = 0; rc == 0 && i < max_items && i < Py_SIZE(v); i++) {
                PyObject *item = Py_NewRef(PyList_CheckExact(v) ? PyList_GET_ITEM(v, i) : PyTuple_GET_ITEM(v, i));
                rc = number_value(item);
                Py_DECREF(item);
            }
        }
        Py_LeaveRecursiveCall();
        return rc;
    }
    if ((found = PySet_Contains(plain_types, type)) != 0)
        return found < 0 ? -1 : 0;
    PyObject *r = PyObject_CallOneArg(number_fn, v);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    found = PySet_Contains(tensor_types, type);
    return found < 0 ? -1 : found ? 0 : PySet_Add(plain_types, type);
}

/* `numbered`: no records, but the tensors' data ids a run that records everything gives them (the owner, the
 * arguments and the keyword arguments' values before the call, its result after it). A failure to number is a
 * recorder error, reported, and the call goes on. */
static PyObject *numbered_call(LoggedCall *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf) + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    int rc = number_value(self->owner);
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++)
        rc = number_value(args[i]);
    if (rc < 0 && recorder_failed() < 0)
        return NULL;
    PyObject *result = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    if (result != NULL && number_value(result) < 0 && recorder_failed() < 0)
        Py_CLEAR(result);
    return result;
}

static PyObject *number(PyObject *module, PyObject *v) {
    if (plain_types == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure_calls first (logged_importlib_bootstrap does)");
        return NULL;
    }
    if (number_value(v) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *logged_call_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    LoggedCall *self = (LoggedCall *)callable;
    PyObject *s = PyDict_GetItemWithError(calls_globals, s_state), *compiling;
    if (s == NULL || s == Py_None) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    }
    Py_INCREF(s); /* a fork or the recorder's end may replace the state meanwhile */
    PyObject *result = NULL;
    if ((compiling = PyDict_GetItemWithError(calls_globals, s_compiling)) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "compiling is missing");
        goto done;
    }
    PyObject *flag = PyObject_CallNoArgs(compiling);
    int is_compiling = flag == NULL ? -1 : PyObject_IsTrue(flag);
    Py_XDECREF(flag);
    if (is_compiling < 0)
        goto done;
    if (is_compiling) {
        result = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
        goto done;
    }
    if (self->info == NULL) {
        result = numbered_call(self, args, nargsf, kwnames);
        goto done;
    }
    int plain = PyObject_IsTrue(PyTuple_GET_ITEM(self->info, INFO_PLAIN));
    if (plain > 0) {
        PyObject *on = PyObject_GetAttr(s, s_plain);
        plain = on == NULL ? -1 : PyObject_IsTrue(on);
        Py_XDECREF(on);
    }
    if (plain < 0)
        goto done;
    result = plain ? plain_path(self, s, args, nargsf, kwnames) : general_path(self, s, args, nargsf, kwnames);
done:
    Py_DECREF(s);
    return result;
}

static int logged_call_traverse(LoggedCall *self, visitproc visit, void *arg) {
    Py_VISIT(self->site);
    Py_VISIT(self->fn);
    Py_VISIT(self->info);
    Py_VISIT(self->owner);
    return 0;
}

static int logged_call_clear(LoggedCall *self) {
    Py_CLEAR(self->site);
    Py_CLEAR(self->fn);
    Py_CLEAR(self->info);
    Py_CLEAR(self->owner);
    return 0;
}

static void logged_call_dealloc(LoggedCall *self) {
    PyObject_GC_UnTrack(self);
    logged_call_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *logged_call_repr(LoggedCall *self) {
    return PyUnicode_FromFormat("<logged call of %R>", self->fn);
}

static PyTypeObject LoggedCallType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "traincheck_rewrite.runtime._speedups.LoggedCall",
    .tp_basicsize = sizeof(LoggedCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(LoggedCall, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)logged_call_traverse,
    .tp_clear = (inquiry)logged_call_clear,
    .tp_dealloc = (destructor)logged_call_dealloc,
    .tp_repr = (reprfunc)logged_call_repr,
    .tp_doc = "What `_tc_(site, fn)` gives for an instrumented API: calling it logs the call (logged_importlib_bootstrap)",
};

/* logged_call(site, fn, info | None, owner | None): the wrapper `hook` returns (info None: `numbered`). */
static PyObject *logged_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "logged_call(site, fn, info, owner)");
        return NULL;
    }
    if (args[2] != Py_None && (!PyTuple_Check(args[2]) || PyTuple_GET_SIZE(args[2]) <= INFO_PLAIN)) {
        PyErr_SetString(PyExc_TypeError, "info must be lookup.py's info tuple or None");
        return NULL;
    }
    LoggedCall *self = PyObject_GC_New(LoggedCall, &LoggedCallType);
    if (self == NULL)
        return NULL;
    self->site = Py_NewRef(args[0]);
    self->fn = Py_NewRef(args[1]);
    self->info = args[2] == Py_None ? NULL : Py_NewRef(args[2]);
    self->owner = Py_NewRef(args[3]);
    self->vectorcall = logged_call_vectorcall;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *configure_calls(PyObject *module, PyObject *args) {
    PyObject *g, *m, *gb, *ge, *ce, *re, *en, *er, *nf, *tt;
    Py_ssize_t batch, items;
    if (!PyArg_ParseTuple(args, "O!O!OOOOOOOO!nn", &PyDict_Type, &g, &PyDict_Type, &m, &gb, &ge, &ce, &re, &en, &er,
                          &nf, &PySet_Type, &tt, &batch, &items))
        return NULL;
    Py_XSETREF(calls_globals, Py_NewRef(g));
    Py_XSETREF(meta_globals, Py_NewRef(m));
    Py_XSETREF(general_begin, Py_NewRef(gb));
    Py_XSETREF(general_end, Py_NewRef(ge));
    Py_XSETREF(closed_by_exception, Py_NewRef(ce));
    Py_XSETREF(recorder_error_fn, Py_NewRef(re));
    Py_XSETREF(encoded_fn, Py_NewRef(en));
    Py_XSETREF(encoded_return_fn, Py_NewRef(er));
    Py_XSETREF(number_fn, Py_NewRef(nf));
    Py_XSETREF(tensor_types, Py_NewRef(tt));
    Py_XSETREF(plain_types, PySet_New(NULL));
    if (plain_types == NULL)
        return NULL;
    batch_size = batch;
    max_items = items;
    Py_RETURN_NONE;
}

static int init_calls(PyObject *module) {
    const char *names[] = {"state", "compiling", "current", "plain", "local", "thread", "new_thread", "stack",
                           "unrecorded", "records", "steps", "refresh", "ids", "tracker", "names_by_id", "proxy_names",
                           "flush_thread"};
    PyObject **slots[] = {&s_state, &s_compiling, &s_current, &s_plain, &s_local, &s_thread, &s_new_thread, &s_stack,
                          &s_unrecorded, &s_records, &s_steps, &s_refresh, &s_ids, &s_tracker, &s_names_by_id,
                          &s_proxy_names, &s_flush_thread};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if ((*slots[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return -1;
#ifndef __linux__
    PyObject *time_module = PyImport_ImportModule("time");
    monotonic_ns = time_module == NULL ? NULL : PyObject_GetAttrString(time_module, "monotonic_ns");
    Py_XDECREF(time_module);
    if (monotonic_ns == NULL)
        return -1;
#endif
    if ((pre_kind = PyLong_FromLong(PRE)) == NULL || (post_kind = PyLong_FromLong(POST)) == NULL ||
        (no_proxies = PyTuple_New(0)) == NULL || PyType_Ready(&LoggedCallType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "LoggedCall", (PyObject *)&LoggedCallType);
}

/* ==== Tensor hashes ================================================================================================= */

/* tensors.tensor_hash of a dense tensor of 32-bit words in host memory, read in place: the sum of each word times
 * its weight modulo 2**32, as a signed 32-bit int. `data`: the address of the tensor's first word, `n` words;
 * `weights`: the address of `_weights_for(n)`'s. The caller holds both tensors (and the GIL) while this reads them. */
static PyObject *word_hash(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "word_hash(data address, words, weights address)");
        return NULL;
    }
    const uint32_t *data = PyLong_AsVoidPtr(args[0]), *weights = PyLong_AsVoidPtr(args[2]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (n < 0 || (n && (data == NULL || weights == NULL || (uintptr_t)data % 4 || (uintptr_t)weights % 4))) {
        PyErr_SetString(PyExc_ValueError, "word_hash: no aligned words to read");
        return NULL;
    }
    uint32_t sum = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        sum += data[i] * weights[i];
    return PyLong_FromLong((int32_t)sum);
}

/* ==== The module ==================================================================================================== */

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(json_text, relabelled, dict_line, kwargs_text): the Python helpers"},
    {"encode", encode, METH_VARARGS, "encode(records, pid, tid, last_time, since) -> (JSON lines, last time)"},
    {"configure_values", configure_values, METH_VARARGS, "configure_values(tensor_json, new_tensor_text, data_ids)"},
    {"data_id", data_id, METH_O, "data_id(tensor) -> its storage's order of appearance, or None"},
    {"tensor_text", tensor_text, METH_O, "tensor_text(tensor) -> its envelope as JSON text, with its data id"},
    {"configure_calls", configure_calls, METH_VARARGS, "configure_calls(globals, meta globals, general_begin, general_end, "
     "closed_by_exception, recorder_error, encoded, encoded_return, number, tensor types, batch size, max items)"},
    {"word_hash", (PyCFunction)(void (*)(void))word_hash, METH_FASTCALL, "word_hash(data address, words, weights address) -> hash"},
    {"number", number, METH_O, "number(value): values.number, the tensors' data ids given in encoding order"},
    {"logged_call", (PyCFunction)(void (*)(void))logged_call, METH_FASTCALL, "logged_call(site, fn, info | None, owner | None)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void) {
    const char *names[] = {"dtype", "layout", "device", "shape", "requires_grad", "is_leaf", "untyped_storage"};
    PyObject **slots[] = {&s_dtype, &s_layout, &s_device, &s_shape, &s_requires_grad, &s_is_leaf, &s_untyped_storage};
    for (int i = 0; i < 7; i++)
        if ((*slots[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL || init_calls(m) < 0) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
