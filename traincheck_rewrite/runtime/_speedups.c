/* The recorder's per-record work in C: encoding a batch of record tuples as JSON lines (encode.py's `encode`, which
 * stays the reference and the fallback when this module is not built) and a tensor's envelope text
 * (values.py's `encoded` for tensors, and its data id).
 *
 * Both produce exactly the bytes of the Python code (tests/test_speedups.py compares them on real runs). What is
 * rare or needs Python's own formatting (state records, exceptions, keyword arguments, proxies, relabelled meta
 * variables, a new kind of tensor) is handed to the Python helpers given to `configure`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

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

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(json_text, relabelled, dict_line, kwargs_text): the Python helpers"},
    {"encode", encode, METH_VARARGS, "encode(records, pid, tid, last_time, since) -> (JSON lines, last time)"},
    {"configure_values", configure_values, METH_VARARGS, "configure_values(tensor_json, new_tensor_text, data_ids)"},
    {"data_id", data_id, METH_O, "data_id(tensor) -> its storage's order of appearance, or None"},
    {"tensor_text", tensor_text, METH_O, "tensor_text(tensor) -> its envelope as JSON text, with its data id"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void) {
    const char *names[] = {"dtype", "layout", "device", "shape", "requires_grad", "is_leaf", "untyped_storage"};
    PyObject **slots[] = {&s_dtype, &s_layout, &s_device, &s_shape, &s_requires_grad, &s_is_leaf, &s_untyped_storage};
    for (int i = 0; i < 7; i++)
        if ((*slots[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return NULL;
    return PyModule_Create(&module);
}
