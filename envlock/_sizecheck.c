/* envlock._sizecheck: the size check of `verify` (envlock/probes/sizes.py) as one C loop on threads.
 *
 * An optional accelerator, built when the platform has a C compiler (setuptools' optional extension, as MarkupSafe
 * builds its speedups): without it, envlock/probes/sizes.py does the same check in Python, with the same answer.
 * The stats are the whole cost of the check; from Python each one also builds an os.stat_result, which takes as
 * long as the syscall. Here each file costs one fstatat, relative to its folder where several files share one.
 *
 *     check = start(jobs, threads)   jobs: [(location, paths joined by "\n", sizes)]; begins on `threads` threads
 *     check.result()                 [[(path, what)] or None for each job], this thread helping; None: not done
 *     check.cancel()                 stop and join the threads; result() then answers None for every job
 *
 * A job is left to Python (None) when its location cannot be opened or its paths are not file-system text: the
 * Python check then says what is wrong in its own words. One difference is known and left: a path whose folder part
 * and name each pass through fewer than the kernel's 40 symbolic links, but together more, is stat'ed here (in two
 * lookups) where Python's one lookup fails (ELOOP, "unreadable"). The threads never touch a Python object: the paths are
 * read from the job strings' own buffers (or their encodings, held here) and the sizes are copied before they start.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if !defined(__unix__) && !defined(__APPLE__)
#error "envlock._sizecheck needs POSIX (fstatat, pthreads); envlock checks sizes in Python elsewhere"
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef O_PATH
#define O_PATH O_RDONLY
#endif
#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif
#define FOLDER_FLAGS (O_PATH | O_DIRECTORY | O_CLOEXEC)
/* A job's location is opened as envlock/probes/sizes.py opens it (readable): where that fails, Python checks the job
 * (it then stats each path whole, and says for itself what is wrong). */
#define LOCATION_FLAGS (O_RDONLY | O_DIRECTORY | O_CLOEXEC)

#define BLOCK 512     /* the files of one unit of work the threads share out */
#define MAX_THREADS 64
#define SHARED_FOLDER 4 /* open a folder of its own for a run of at least this many files (else stat from the top) */

enum { SAME = 0, MISSING = 1, UNREADABLE = 2, OTHER_SIZE = 3 };

typedef struct {
    const char *path; /* not NUL-terminated: `len` bytes */
    Py_ssize_t len;
    Py_ssize_t job;
    long long size;   /* what RECORD says */
    long long have;   /* OTHER_SIZE: what the disk says */
    int folder;       /* the job's location, open */
    int what;
} Entry;

typedef struct {
    PyObject_HEAD
    Entry *entries;
    Py_ssize_t count;
    Py_ssize_t jobs;
    char *done;         /* per job: 1 when its files are in `entries` (else Python checks it) */
    int *folders;       /* the locations opened, to close */
    Py_ssize_t nfolders;
    PyObject *keep;     /* the objects whose buffers `entries` points into */
    atomic_size_t next; /* the next block to take */
    atomic_int stop;
    pthread_t threads[MAX_THREADS];
    int nthreads;
    pid_t pid;          /* a forked copy of this object has no threads to join */
    int finished;
    int busy;           /* result() or cancel() is joining the threads (with the GIL released) */
} Check;

static int
stat_path(int folder, const char *path, Py_ssize_t len, struct stat *st)
{
    char buf[PATH_MAX];
    int rc;
    if (len >= (Py_ssize_t)sizeof(buf)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, (size_t)len);
    buf[len] = '\0';
    do {
        rc = fstatat(folder, buf, st, 0);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

/* The folder part of `e`'s path (up to its last '/'), or 0 when it has none or the leaf is empty. */
static Py_ssize_t
folder_part(const Entry *e)
{
    Py_ssize_t i = e->len;
    while (i > 0 && e->path[i - 1] != '/')
        i--;
    if (i == e->len) /* "a/": Python stats the folder itself */
        return 0;
    return i > 0 ? i - 1 : 0;
}

static int
same_folder(const Entry *a, const Entry *b, Py_ssize_t part)
{
    /* b is a file of a's folder: the same folder part, then a leaf that is not empty ("a/b/" stats b itself) */
    return a->folder == b->folder && b->len > part + 1 && b->path[part] == '/' && memcmp(a->path, b->path, part) == 0
           && memchr(b->path + part + 1, '/', (size_t)(b->len - part - 1)) == NULL;
}

static void
check_block(Entry *entries, Py_ssize_t first, Py_ssize_t end)
{
    int sub = -1;              /* the open folder of the run being checked, or -1 */
    const Entry *owner = NULL; /* the entry whose folder `sub` is */
    Py_ssize_t part = 0;
    for (Py_ssize_t i = first; i < end; i++) {
        Entry *e = &entries[i];
        struct stat st;
        int rc;
        if (e->what == UNREADABLE) /* a NUL in the path: it names no file */
            continue;
        if (owner != NULL && !same_folder(owner, e, part)) {
            if (sub >= 0)
                close(sub);
            sub = -1;
            owner = NULL;
        }
        if (owner == NULL) {
            Py_ssize_t p = folder_part(e);
            if (p > 0 && i + SHARED_FOLDER <= end && same_folder(e, &entries[i + SHARED_FOLDER - 1], p)) {
                char buf[PATH_MAX];
                if (p < (Py_ssize_t)sizeof(buf)) {
                    memcpy(buf, e->path, (size_t)p);
                    buf[p] = '\0';
                    do {
                        sub = openat(e->folder, buf, FOLDER_FLAGS);
                    } while (sub < 0 && errno == EINTR);
                }
                owner = e; /* when the folder cannot be opened, its files are stat'ed whole and say why */
                part = p;
            }
        }
        /* A path too long for one lookup is stat'ed whole, so that it fails as in Python (ENAMETOOLONG). */
        if (sub >= 0 && e->len < PATH_MAX)
            rc = stat_path(sub, e->path + part + 1, e->len - part - 1, &st);
        else
            rc = stat_path(e->folder, e->path, e->len, &st);
        if (rc != 0)
            e->what = errno == ENOENT ? MISSING : UNREADABLE;
        else if ((long long)st.st_size != e->size) {
            e->what = OTHER_SIZE;
            e->have = (long long)st.st_size;
        }
    }
    if (sub >= 0)
        close(sub);
}

static void
work(Check *self)
{
    Py_ssize_t blocks = (self->count + BLOCK - 1) / BLOCK;
    for (;;) {
        if (atomic_load(&self->stop))
            return;
        size_t b = atomic_fetch_add(&self->next, 1);
        if ((Py_ssize_t)b >= blocks)
            return;
        Py_ssize_t first = (Py_ssize_t)b * BLOCK;
        Py_ssize_t end = first + BLOCK < self->count ? first + BLOCK : self->count;
        check_block(self->entries, first, end);
    }
}

static void *
thread_main(void *arg)
{
    work((Check *)arg);
    return NULL;
}

static void
join_threads(Check *self)
{
    if (self->pid != getpid()) { /* a forked copy: the threads are the parent's */
        self->nthreads = 0;
        return;
    }
    for (int i = 0; i < self->nthreads; i++)
        pthread_join(self->threads[i], NULL);
    self->nthreads = 0;
}

static void
release(Check *self)
{
    for (Py_ssize_t i = 0; i < self->nfolders; i++)
        close(self->folders[i]);
    self->nfolders = 0;
    PyMem_RawFree(self->folders);
    self->folders = NULL;
    PyMem_RawFree(self->entries);
    self->entries = NULL;
    self->count = 0;
    PyMem_RawFree(self->done);
    self->done = NULL;
    Py_CLEAR(self->keep);
}

static void
Check_dealloc(Check *self)
{
    atomic_store(&self->stop, 1);
    if (self->nthreads) {
        Py_BEGIN_ALLOW_THREADS
        join_threads(self);
        Py_END_ALLOW_THREADS
    }
    release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The bytes of a path string the threads may read without the GIL: the string's own buffer when it is ASCII, else
 * its file-system encoding, kept in `keep`. NULL (no error set) when it has none (a lone surrogate). */
static const char *
path_bytes(PyObject *text, PyObject *keep, Py_ssize_t *len)
{
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0)
        return NULL;
#endif
    if (PyUnicode_IS_ASCII(text)) {
        *len = PyUnicode_GET_LENGTH(text);
        return (const char *)PyUnicode_DATA(text);
    }
    PyObject *encoded = PyUnicode_EncodeFSDefault(text);
    if (encoded == NULL) {
        PyErr_Clear();
        return NULL;
    }
    /* The paths come back decoded from these bytes: only a text they decode to again is done here. */
    PyObject *again = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded));
    int same = again != NULL ? PyUnicode_Compare(again, text) : -1;
    Py_XDECREF(again);
    if (same != 0) {
        PyErr_Clear();
        Py_DECREF(encoded);
        return NULL;
    }
    int rc = PyList_Append(keep, encoded);
    Py_DECREF(encoded);
    if (rc < 0)
        return NULL;
    *len = PyBytes_GET_SIZE(encoded);
    return PyBytes_AS_STRING(encoded);
}

static int
open_location(PyObject *location)
{
    PyObject *encoded = PyUnicode_EncodeFSDefault(location);
    if (encoded == NULL) {
        PyErr_Clear();
        return -1;
    }
    int fd = -1;
    const char *raw = PyBytes_AS_STRING(encoded);
    if ((Py_ssize_t)strlen(raw) == PyBytes_GET_SIZE(encoded)) {
        Py_BEGIN_ALLOW_THREADS
        do {
            fd = open(raw, LOCATION_FLAGS);
        } while (fd < 0 && errno == EINTR);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(encoded);
    return fd;
}

/* Count the paths of one job and check its sizes are a tuple of ints as long: -1 when not (Python checks it). */
static Py_ssize_t
job_files(const char *joined, Py_ssize_t len, PyObject *sizes)
{
    Py_ssize_t n = 0;
    if (len > 0) {
        n = 1;
        for (const char *p = joined; (p = memchr(p, '\n', (size_t)(joined + len - p))) != NULL; p++)
            n++;
    }
    return PyTuple_Check(sizes) && PyTuple_GET_SIZE(sizes) == n ? n : -1;
}

static PyTypeObject CheckType;

static PyObject *
start(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *jobs;
    int threads;
    if (!PyArg_ParseTuple(args, "O!i:start", &PyList_Type, &jobs, &threads))
        return NULL;
    Check *self = PyObject_New(Check, &CheckType);
    if (self == NULL)
        return NULL;
    self->entries = NULL;
    self->count = 0;
    self->jobs = PyList_GET_SIZE(jobs);
    self->folders = NULL;
    self->nfolders = 0;
    self->nthreads = 0;
    self->finished = 0;
    self->busy = 0;
    self->pid = getpid();
    atomic_init(&self->next, 0);
    atomic_init(&self->stop, 0);
    self->keep = PyList_New(0);
    self->done = PyMem_RawCalloc((size_t)self->jobs + 1, 1);
    self->folders = PyMem_RawMalloc(((size_t)self->jobs + 1) * sizeof(int));
    if (self->keep == NULL || self->done == NULL || self->folders == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    /* The jobs as a tuple of their own: the list may change while the threads read the strings its items hold. */
    jobs = PyList_AsTuple(jobs);
    if (jobs == NULL || PyList_Append(self->keep, jobs) < 0) {
        Py_XDECREF(jobs);
        Py_DECREF(self);
        return NULL;
    }
    Py_DECREF(jobs); /* held by keep */

    /* First pass: which jobs are done here, and how many files they hold. */
    const char **joined = PyMem_RawMalloc(((size_t)self->jobs + 1) * sizeof(char *));
    Py_ssize_t *lengths = PyMem_RawMalloc(((size_t)self->jobs + 1) * sizeof(Py_ssize_t));
    int *folder_of = PyMem_RawMalloc(((size_t)self->jobs + 1) * sizeof(int));
    if (joined == NULL || lengths == NULL || folder_of == NULL) {
        PyMem_RawFree(joined);
        PyMem_RawFree(lengths);
        PyMem_RawFree(folder_of);
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    PyObject *opened = PyDict_New(); /* location -> its descriptor (-1: it does not open), each opened once */
    if (opened == NULL) {
        PyMem_RawFree(joined);
        PyMem_RawFree(lengths);
        PyMem_RawFree(folder_of);
        Py_DECREF(self);
        return NULL;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t j = 0; j < self->jobs; j++) {
        PyObject *job = PyTuple_GET_ITEM(jobs, j);
        folder_of[j] = -1;
        if (!PyTuple_Check(job) || PyTuple_GET_SIZE(job) != 3 || !PyUnicode_Check(PyTuple_GET_ITEM(job, 0))
            || !PyUnicode_Check(PyTuple_GET_ITEM(job, 1)))
            continue;
        PyObject *location = PyTuple_GET_ITEM(job, 0);
        const char *text = path_bytes(PyTuple_GET_ITEM(job, 1), self->keep, &lengths[j]);
        if (text == NULL) {
            if (PyErr_Occurred())
                goto fail;
            continue;
        }
        Py_ssize_t n = job_files(text, lengths[j], PyTuple_GET_ITEM(job, 2));
        if (n < 0)
            continue;
        int folder;
        PyObject *known = PyDict_GetItemWithError(opened, location);
        if (known != NULL) {
            folder = (int)PyLong_AsLong(known);
        } else {
            if (PyErr_Occurred())
                goto fail;
            folder = open_location(location);
            if (folder >= 0)
                self->folders[self->nfolders++] = folder;
            PyObject *number = PyLong_FromLong(folder);
            int rc = number != NULL ? PyDict_SetItem(opened, location, number) : -1;
            Py_XDECREF(number);
            if (rc < 0)
                goto fail;
        }
        if (folder < 0)
            continue;
        folder_of[j] = folder;
        joined[j] = text;
        self->done[j] = 1;
        total += n;
    }

    /* Second pass: one entry per file. */
    self->entries = PyMem_RawMalloc(((size_t)total + 1) * sizeof(Entry));
    if (self->entries == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t j = 0; j < self->jobs; j++) {
        if (!self->done[j])
            continue;
        PyObject *sizes = PyTuple_GET_ITEM(PyTuple_GET_ITEM(jobs, j), 2);
        const char *p = joined[j], *end = joined[j] + lengths[j];
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(sizes); i++) { /* as Python's joined.split("\n") */
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *stop = nl != NULL ? nl : end;
            Entry *e = &self->entries[self->count];
            e->size = PyLong_AsLongLong(PyTuple_GET_ITEM(sizes, i));
            if (e->size == -1 && PyErr_Occurred())
                goto fail;
            e->path = p;
            e->len = stop - p;
            e->job = j;
            e->have = 0;
            e->folder = folder_of[j];
            /* A NUL cannot be in a file's name: Python's os.stat refuses it (ValueError), said "unreadable". */
            e->what = memchr(p, '\0', (size_t)e->len) != NULL ? UNREADABLE : SAME;
            self->count++;
            p = stop + 1;
        }
    }
    PyMem_RawFree(joined);
    PyMem_RawFree(lengths);
    PyMem_RawFree(folder_of);
    Py_DECREF(opened);
    joined = NULL;

    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    /* The threads start with every signal blocked: signals go to the interpreter's threads (Ctrl-C to the main
     * one), never to a stat loop. */
    sigset_t all, before;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &before);
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&self->threads[i], NULL, thread_main, self) != 0)
            break; /* fewer threads, or none: result() does the rest */
        self->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    return (PyObject *)self;

fail:
    PyMem_RawFree(joined);
    PyMem_RawFree(lengths);
    PyMem_RawFree(folder_of);
    Py_DECREF(opened);
    Py_DECREF(self);
    return NULL;
}

static PyObject *
what_of(const Entry *e)
{
    switch (e->what) {
    case MISSING:
        return PyUnicode_FromString("missing");
    case UNREADABLE:
        return PyUnicode_FromString("unreadable");
    default:
        return PyUnicode_FromFormat("%lld bytes in RECORD, %lld on disk", e->size, e->have);
    }
}

static PyObject *
Check_result(Check *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(self->jobs);
    if (out == NULL)
        return NULL;
    if (self->finished || self->entries == NULL || self->pid != getpid()) {
        /* cancelled, answered once, or a forked copy (the parent's threads filled part of its entries before the
         * fork): Python checks every job */
        for (Py_ssize_t j = 0; j < self->jobs; j++)
            PyList_SET_ITEM(out, j, Py_NewRef(Py_None));
        return out;
    }
    if (self->busy) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "this size check is being answered on another thread");
        return NULL;
    }
    self->busy = 1; /* set and read with the GIL held */
    Py_BEGIN_ALLOW_THREADS
    work(self);
    join_threads(self);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    self->finished = 1;
    if (atomic_load(&self->stop)) { /* cancelled meanwhile, from another thread: not every file was checked */
        release(self);
        for (Py_ssize_t j = 0; j < self->jobs; j++)
            PyList_SET_ITEM(out, j, Py_NewRef(Py_None));
        return out;
    }
    for (Py_ssize_t j = 0; j < self->jobs; j++) {
        PyObject *found = self->done[j] ? PyList_New(0) : Py_NewRef(Py_None);
        if (found == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, j, found);
    }
    for (Py_ssize_t i = 0; i < self->count; i++) {
        const Entry *e = &self->entries[i];
        if (e->what == SAME)
            continue;
        PyObject *path = PyUnicode_DecodeFSDefaultAndSize(e->path, e->len);
        PyObject *what = path != NULL ? what_of(e) : NULL;
        PyObject *pair = what != NULL ? PyTuple_Pack(2, path, what) : NULL;
        Py_XDECREF(path);
        Py_XDECREF(what);
        if (pair == NULL || PyList_Append(PyList_GET_ITEM(out, e->job), pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(pair);
    }
    release(self);
    return out;
}

static PyObject *
Check_cancel(Check *self, PyObject *Py_UNUSED(ignored))
{
    atomic_store(&self->stop, 1);
    if (self->busy) /* another thread is joining them: it stops at the next block, and answers */
        Py_RETURN_NONE;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    join_threads(self);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    self->finished = 1;
    release(self);
    Py_RETURN_NONE;
}

static PyMethodDef Check_methods[] = {
    {"result", (PyCFunction)Check_result, METH_NOARGS,
     "[[(path, what)] or None for each job]: the rest of the work on this thread, then the threads joined."},
    {"cancel", (PyCFunction)Check_cancel, METH_NOARGS, "Stop and join the threads; nothing is answered."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CheckType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "envlock._sizecheck.Check",
    .tp_basicsize = sizeof(Check),
    .tp_dealloc = (destructor)Check_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A size check begun on threads (see start).",
    .tp_methods = Check_methods,
};

static PyMethodDef module_methods[] = {
    {"start", start, METH_VARARGS,
     "start(jobs, threads): begin the size check of [(location, paths joined by newlines, sizes)] on threads."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "envlock._sizecheck", "The size check of verify as one C loop on threads.", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__sizecheck(void)
{
    if (PyType_Ready(&CheckType) < 0)
        return NULL;
    return PyModule_Create(&module);
}
